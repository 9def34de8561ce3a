"""Aggregate decode speed of a full-size Qwen2.5-VL-7B when conversations are batched.

The transformers engine answers the turns that wait while the model is busy in one
left-padded ``generate`` (worker/engines/batching.py). This measures what that buys on a
GPU: N conversations, each with its own 448x448 picture and question, decoded together;
aggregate tokens/s = N x new tokens / decode time, beside the single stream measured in
the same run and the model card's 28.87 tokens/s (Qwen-VL-Chat, BF16, one A100-80G).
Random bf16 weights in the published shapes (no hub: a forward pass costs the same
whatever the weights hold), greedy, exactly --new-tokens tokens per conversation.

    python -m benchmarks.batch_decode                         # GPU: 1, 8 and 32 conversations
    python -m benchmarks.batch_decode --layers 2 --depth 2 --conversations 1 2   # check the script
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText

from benchmarks.decode_speed import CARD_TOKENS_PER_S, Clock, _sync, config_7b, processor_7b
from worker.engines.transformers_engine import collate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--layers", type=int, default=28, help="text layers (28 in the real model)")
    parser.add_argument("--depth", type=int, default=32, help="vision blocks (32 in the real model)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    processor = processor_7b()
    with torch.device(args.device):
        model = AutoModelForImageTextToText.from_config(
            config_7b(processor.tokenizer, layers=args.layers, depth=args.depth), dtype=torch.bfloat16).eval()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"device {args.device} ({name}); Qwen2.5-VL-7B shapes, random bf16 weights; one 448x448 picture "
          f"per conversation; {args.new_tokens} new tokens each, greedy")

    def encode(i: int):
        picture = Image.new("RGB", (448, 448), "white")
        ImageDraw.Draw(picture).rectangle((20 + i % 50, 40, 300, 360), fill=(200, 10 * (i % 25), 30))
        messages = [{"role": "user", "content": [{"type": "image", "image": picture},
                                                 {"type": "text", "text": f"Conversation {i}: box the red square."}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                             return_dict=True, return_tensors="pt")

    def aggregate(n: int) -> float:
        inputs = collate([encode(i) for i in range(n)], pad_id=0).to(args.device, dtype=torch.bfloat16)
        clock = Clock()
        _sync()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                           do_sample=False, streamer=clock, pad_token_id=0)
        first, last = clock.times[1], clock.times[-1]
        return n * (len(clock.times) - 2) / (last - first)

    aggregate(1)  # warm-up
    single = None
    print(f"{'conversations':>13} {'tokens/s (all)':>15} {'x one stream':>13} {'x model card':>13}")
    for n in args.conversations:
        started = time.perf_counter()
        rate = aggregate(n)
        single = single or (rate if n == 1 else None)
        ratio = f"{rate / single:.1f}" if single else "-"
        print(f"{n:>13} {rate:>15.1f} {ratio:>13} {rate / CARD_TOKENS_PER_S:>13.1f}   "
              f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
