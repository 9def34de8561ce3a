"""Tiny random-weight Qwen-VL models for tests and offline demos.

``make_tiny`` writes a directory laid out like a real Hugging Face checkpoint
(config, generation config, safetensors, tokenizer, image processor, chat
template), so the real loading code runs against it with no hub. The weights
are random: the answers are nonsense, but the shapes, special tokens and
templates are the family's own.

Heavy imports (torch, transformers) happen inside ``make_tiny`` so that
importing this module stays cheap.
"""

from __future__ import annotations

import json
from pathlib import Path

from qvl.models import Family

FAMILIES = (Family.QWEN2_VL, Family.QWEN25_VL, Family.QWEN3_VL)

# Added tokens in the order of the real tokenizers (ids 151643...), with their
# "special" flag. Only the order matters here: ids follow the tiny vocabulary.
_QWEN2_VL_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
]
_QWEN2_5_VL_TOKENS = _QWEN2_VL_TOKENS + [
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
_QWEN3_VL_TOKENS = _QWEN2_5_VL_TOKENS + [
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]

# The Qwen2-VL-Instruct chat template (Qwen2.5-VL-Instruct ships the same one).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The Qwen3-VL-Instruct chat template (no default system prompt; tool calls).
QWEN3_VL_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# A small bilingual corpus: enough merges that words and common Chinese
# characters become single tokens, so token counts look roughly like real ones.
_CORPUS = [
    "Hello! What is in this picture? Please describe the image in detail.",
    "The picture shows a red square, a blue circle and a green triangle on a white background.",
    "Where is the dog? The dog is on the left, next to the tree.",
    "Draw a box around the cat. The cat is at the top right of the photo.",
    "There are two people, a bicycle and a car in the street.",
    "Thank you. Can you read the text on the sign? It says OPEN.",
    "What colour is the shirt? The shirt is yellow.",
    "Count the apples: one, two, three, four, five.",
    "0 1 2 3 4 5 6 7 8 9 10 100 250 500 999 1000 (12,34),(560,780)",
    "你好！这张图片里有什么？请详细描述这张图片。",
    "图片中有一个红色的正方形、一个蓝色的圆形和一个绿色的三角形。",
    "狗在哪里？狗在左边，树的旁边。",
    "请框出图中的猫。猫在照片的右上角。",
    "街上有两个人、一辆自行车和一辆汽车。",
    "谢谢。你能读出牌子上的字吗？上面写着营业中。",
    "这是一只猫，那是一只狗。我们今天去公园。",
]


# The processor class each family's published checkpoints name in preprocessor_config.json.
PROCESSOR_CLASS = {
    "qwen2-vl": "Qwen2VLProcessor",
    "qwen2.5-vl": "Qwen2_5_VLProcessor",
    "qwen3-vl": "Qwen3VLProcessor",
}
_TOKENS = {"qwen2-vl": _QWEN2_VL_TOKENS, "qwen2.5-vl": _QWEN2_5_VL_TOKENS, "qwen3-vl": _QWEN3_VL_TOKENS}
_HIDDEN = 64  # text hidden size; 4 heads of 16
_BPE_VOCAB = 640  # byte alphabet (256) + merges


def make_tiny(directory: Path, family: str = "qwen2-vl") -> Path:
    """Write a tiny random-weight model of ``family`` to ``directory`` and return the path.

    The result loads offline with ``AutoProcessor`` / ``AutoModelForImageTextToText``
    (without torchvision, through ``worker.engines.hf_compat``). The same family
    always gives the same files. Raises ``ValueError`` for an unknown family.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(family)
    tokenizer.save_pretrained(directory)
    _save_image_processor(directory, family)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token, _ in _TOKENS[family]}
    config = _model_config(family, vocab_size=len(tokenizer), ids=ids)
    # fork_rng: seeding here must not disturb the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    _quietly(model.save_pretrained, directory)
    return directory


def _quietly(function, *args):
    """Run ``function`` without transformers' progress bars (noise in test logs)."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        return function(*args)
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def _build_tokenizer(family: str):
    """A byte-level BPE like Qwen2's, trained on ``_CORPUS``, plus the family's added tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    trainee = Tokenizer(BPE(fuse_unk=False, byte_fallback=False))
    trainee.normalizer = normalizers.NFC()
    trainee.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = BpeTrainer(vocab_size=_BPE_VOCAB, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    trainee.train_from_iterator(_CORPUS, trainer)
    bpe = json.loads(trainee.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe["vocab"],
        merges=[tuple(merge) for merge in bpe["merges"]],
        unk_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    tokenizer.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in _TOKENS[family]])
    extra = [t for t, special in _TOKENS[family] if special and t != "<|endoftext|>"]
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "extra_special_tokens": extra})
    tokenizer.chat_template = (
        QWEN3_VL_CHAT_TEMPLATE if family == "qwen3-vl" else QWEN2_VL_CHAT_TEMPLATE
    )
    return tokenizer


def _save_image_processor(directory: Path, family: str) -> None:
    """Write preprocessor_config.json as the real checkpoints do, with small pixel limits."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    patch = 16 if family == "qwen3-vl" else 14
    factor = patch * 2
    # Qwen3-VL normalises with 0.5/0.5; Qwen2(.5)-VL with CLIP's statistics.
    stats = {} if family != "qwen3-vl" else {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    processor = Qwen2VLImageProcessorPil(
        min_pixels=factor * factor * 4,
        max_pixels=factor * factor * 64,  # a 448x448 picture shrinks to 64 tokens
        patch_size=patch,
        temporal_patch_size=2,
        merge_size=2,
        **stats,
    )
    processor.save_pretrained(directory)
    path = directory / "preprocessor_config.json"
    data = json.loads(path.read_text())
    # Published checkpoints name the torchvision-backed class; AutoImageProcessor
    # falls back to the PIL one without torchvision. They also name a
    # "processor_class", left out here so that AutoProcessor follows its
    # registry (see worker/engines/hf_compat.py); PROCESSOR_CLASS has the names.
    data["image_processor_type"] = "Qwen2VLImageProcessor"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _model_config(family: str, *, vocab_size: int, ids: dict[str, int]):
    """A 2-layer, hidden-64 text model and a depth-1 vision tower of ``family``."""
    from transformers import AutoConfig

    text = {
        "vocab_size": vocab_size,
        "hidden_size": _HIDDEN,
        "intermediate_size": 2 * _HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision = {"depth": 1, "num_heads": 2, "spatial_merge_size": 2, "temporal_patch_size": 2}
    if family == "qwen2-vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6,
                                   "mrope_section": [2, 3, 3]}
        vision.update(embed_dim=32, mlp_ratio=2, hidden_size=_HIDDEN, patch_size=14)
        model_type = "qwen2_vl"
    elif family == "qwen2.5-vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6,
                                   "mrope_section": [2, 3, 3]}
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=_HIDDEN,
                      patch_size=14, window_size=112, fullatt_block_indexes=[0])
        model_type = "qwen2_5_vl"
    else:
        text["head_dim"] = _HIDDEN // 4
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e6,
                                   "mrope_section": [4, 2, 2], "mrope_interleaved": True}
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=_HIDDEN,
                      patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0])
        model_type = "qwen3_vl"
    return AutoConfig.for_model(
        model_type,
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
