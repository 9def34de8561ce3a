"""First-token latency and decode speed of a full-size Qwen2.5-VL-7B, random weights.

The cost of a forward pass does not depend on the weights' values, so no hub is needed:
the published Qwen2.5-VL-7B-Instruct shapes, random bf16 weights, one conversation with
one 448x448 picture, greedy decoding of exactly --new-tokens tokens.

    python benchmarks/decode_speed.py                       # GPU if there is one, else CPU
    python benchmarks/decode_speed.py --layers 2 --depth 2  # a quick check of the script itself

For comparison, Qwen-VL-Chat's model card: 28.87 tokens/s in BF16 on one A100-80G.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from transformers import AutoConfig, AutoModelForImageTextToText
from transformers.generation.streamers import BaseStreamer

from worker.engines.hf_compat import load_processor
from worker.engines.tiny import make_tiny

CARD_TOKENS_PER_S = 28.87  # Qwen-VL-Chat, BF16, A100-80G (model card)
PIXELS = (3136, 12845056)  # Qwen2.5-VL's preprocessor_config.json: a 448x448 picture is 256 tokens


def config_7b(tokenizer, *, layers: int, depth: int):
    """Qwen2.5-VL-7B-Instruct's published shapes (config.json), special ids from ``tokenizer``."""
    ids = tokenizer.convert_tokens_to_ids
    return AutoConfig.for_model(
        "qwen2_5_vl",
        text_config={"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
                     "num_hidden_layers": layers, "num_attention_heads": 28, "num_key_value_heads": 4,
                     "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
        vision_config={"depth": depth, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                       "out_hidden_size": 3584, "patch_size": 14, "window_size": 112, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "tokens_per_second": 2,
                       "fullatt_block_indexes": [i for i in (7, 15, 23, 31) if i < depth]},
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def processor_7b():
    """A Qwen2.5-VL processor with the published pixel limits (the tiny model's tokenizer: no hub)."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_tiny(Path(tmp), "qwen2.5-vl")
        path = directory / "preprocessor_config.json"  # the published pixel limits, not the tiny ones
        data = json.loads(path.read_text())
        data.update(min_pixels=PIXELS[0], max_pixels=PIXELS[1], size={"shortest_edge": PIXELS[0],
                                                                      "longest_edge": PIXELS[1]})
        path.write_text(json.dumps(data))
        return load_processor(directory)


class Clock(BaseStreamer):
    """Times generate's calls: the first is the prompt, the second the first new token."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        _sync()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=28, help="text layers (28 in the real model)")
    parser.add_argument("--depth", type=int, default=32, help="vision blocks (32 in the real model)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (a decode rate needs two tokens)")

    processor = processor_7b()
    config = config_7b(processor.tokenizer, layers=args.layers, depth=args.depth)
    started = time.perf_counter()
    with torch.device(args.device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}), "
          f"{params / 1e9:.2f} B parameters in bf16, built in {time.perf_counter() - started:.0f} s")

    picture = Image.new("RGB", (448, 448), "white")
    ImageDraw.Draw(picture).rectangle((60, 80, 300, 360), fill="red")
    messages = [{"role": "user", "content": [{"type": "image", "image": picture},
                                             {"type": "text", "text": "What is in this picture? Box the red square."}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt").to(args.device)
    prompt = inputs["input_ids"].shape[1]
    print(f"prompt {prompt} tokens (one 448x448 picture), {args.new_tokens} new tokens, greedy")

    def run(new_tokens: int) -> tuple[float, float]:
        clock = Clock()
        _sync()
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           streamer=clock, pad_token_id=0)
        first, last = clock.times[1], clock.times[-1]
        return first - start, (len(clock.times) - 2) / (last - first)

    run(2)  # warm-up
    results = [run(args.new_tokens) for _ in range(args.runs)]
    first = statistics.median(r[0] for r in results)
    rate = statistics.median(r[1] for r in results)
    print(f"first token: {first * 1000:.0f} ms (median of {args.runs})")
    print(f"decode: {rate:.2f} tokens/s (median of {args.runs})")
    print(f"for context, not a like-for-like baseline: Qwen-VL-Chat (a 9.6 B model) decodes "
          f"{CARD_TOKENS_PER_S} tokens/s in BF16 on one A100-80G (its model card)")


if __name__ == "__main__":
    main()
