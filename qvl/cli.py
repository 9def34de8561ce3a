"""The ``qvl`` command: one sub-command per job, each importing only what it needs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from qvl.errors import UserFacingError


def main(argv: list[str] | None = None) -> int:
    """Run the ``qvl`` command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except UserFacingError as exc:
        print(f"qvl: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qvl", description="Qwen-VL chat bots with grounding.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(metavar="COMMAND")

    draw = sub.add_parser("draw", help="parse a model answer's boxes and draw them on a picture")
    draw.add_argument("image", type=Path, help="the picture the answer is about")
    draw.add_argument("--family", required=True,
                      choices=["qwen-vl", "qwen2-vl", "qwen2.5-vl", "qwen3-vl"],
                      help="the model generation that wrote the answer")
    draw.add_argument("--text", required=True, help="the model's answer; '-' reads standard input")
    draw.add_argument("--input-size", metavar="WxH", type=_size,
                      help="qwen2.5-vl: the size the model saw (default: the processor's resize rule)")
    draw.add_argument("-o", "--output", type=Path, help="write the annotated picture here")
    draw.add_argument("--json", action="store_true", help="print {text, boxes, skipped} as JSON")
    draw.set_defaults(func=cmd_draw)
    return parser


def _size(value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 1288x812, got {value!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError("width and height must be positive")
    return w, h


def cmd_draw(args: argparse.Namespace) -> int:
    """``qvl draw``: print the cleaned text (or JSON) and write the annotated picture."""
    from worker.grounding import ground
    from worker.grounding.draw import draw_boxes
    from worker.images import Limits, decode_image

    text = sys.stdin.read() if args.text == "-" else args.text
    try:
        data = args.image.read_bytes()
    except OSError as exc:
        raise UserFacingError(f"cannot read {args.image}: {exc.strerror}") from exc
    image, _ = decode_image(data, Limits(max_bytes=1 << 40, max_pixels=1 << 40))
    result = ground(text, args.family, size=image.size, input_size=args.input_size)
    if args.json:
        print(json.dumps(result.as_json(), ensure_ascii=False))
    else:
        print(result.text)
        for box in result.boxes:
            print(f"  {box.label or '(no label)'}: {list(box.box)}")
        for reason in result.skipped:
            print(f"  skipped: {reason}", file=sys.stderr)
    if args.output:
        draw_boxes(image, result.boxes).save(args.output)
        if not args.json:
            print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
