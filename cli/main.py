"""The ``qvl`` command: one sub-command per job, each importing only what it needs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from qvl.errors import UserFacingError
from qvl.models import Family


def main(argv: list[str] | None = None) -> int:
    """Run the ``qvl`` command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
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
    except Exception as exc:  # an operator reads one line; -v shows the traceback
        logging.getLogger("qvl").debug("command failed", exc_info=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"qvl: {type(exc).__name__}: {first[:300]} (run with -v for details)", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qvl", description="Qwen-VL chat bots with grounding.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(metavar="COMMAND")

    draw = sub.add_parser("draw", help="parse a model answer's boxes and draw them on a picture")
    draw.add_argument("image", type=Path, help="the picture the answer is about")
    draw.add_argument("--family", required=True,
                      choices=[f.value for f in Family],
                      help="the model generation that wrote the answer")
    draw.add_argument("--text", required=True, help="the model's answer; '-' reads standard input")
    draw.add_argument("--input-size", metavar="WxH", type=_size,
                      help="qwen2.5-vl: the size the model saw (default: the processor's resize rule)")
    draw.add_argument("-o", "--output", type=Path, help="write the annotated picture here")
    draw.add_argument("--json", action="store_true", help="print {text, boxes, skipped} as JSON")
    draw.set_defaults(func=cmd_draw)

    up = sub.add_parser("up", help="run the service: migrate, embedded Redis, a worker, the frontends")
    up.set_defaults(func=cmd_up)

    worker = sub.add_parser("worker", help="run a worker only (scale-out; needs REDIS_URL and DATABASE_URL)")
    worker.add_argument("-c", "--concurrency", type=int, default=None,
                        help="turns in flight (default: QVL_WORKER_CONCURRENCY or the engine's)")
    worker.add_argument("--pool", default=None, choices=["solo", "prefork", "threads"],
                        help="Celery pool (default: threads when more than one turn is in flight)")
    worker.set_defaults(func=cmd_worker)

    discord_ = sub.add_parser("discord", help="run the Discord frontend only (needs DISCORD_TOKEN, REDIS_URL)")
    discord_.set_defaults(func=cmd_discord)

    wechat = sub.add_parser("wechat", help="run the WeChat frontend only (needs WECHATY_PUPPET_SERVICE_ENDPOINT)")
    wechat.set_defaults(func=cmd_wechat)

    wecom = sub.add_parser("wecom", help="run the WeCom frontend only (needs WECOM_BOT_ID, WECOM_BOT_SECRET)")
    wecom.set_defaults(func=cmd_wecom)

    web = sub.add_parser("web", help="run the web page and the OpenAI-compatible API only (QVL_WEB_HOST:QVL_WEB_PORT)")
    web.set_defaults(func=cmd_web)

    keys = sub.add_parser("keys", help="API keys for the web page and the API").add_subparsers(metavar="ACTION")
    keys_create = keys.add_parser("create", help="make a key; its secret is shown once")
    keys_create.add_argument("name")
    keys_create.add_argument("--rate-limit", type=int, metavar="N",
                             help="turns per QVL_RATE_LIMIT_WINDOW_S for this key (default: no limit of its own)")
    keys_create.set_defaults(func=cmd_keys_create)
    keys_list = keys.add_parser("list", help="every key: name, prefix, rate limit, revoked or not")
    keys_list.set_defaults(func=cmd_keys_list)
    keys_revoke = keys.add_parser("revoke", help="revoke a key for good (by name or id)")
    keys_revoke.add_argument("name")
    keys_revoke.set_defaults(func=cmd_keys_revoke)

    chat = sub.add_parser("chat", help="one chat turn from the terminal, through the running service")
    chat.add_argument("images", nargs="*", type=Path, help="pictures to send with the question")
    chat.add_argument("--text", default="", help="the question; '-' reads standard input")
    chat.add_argument("--reset", action="store_true", help="forget the conversation first")
    chat.add_argument("-o", "--out-dir", type=Path, default=Path("."), help="where annotated pictures go")
    chat.add_argument("--user", help="whose conversation (default: your login name)")
    chat.add_argument("--timeout", type=float, default=600, help="seconds to wait for the answer")
    chat.set_defaults(func=cmd_chat)

    db = sub.add_parser("db", help="database maintenance").add_subparsers(metavar="ACTION")
    db_up = db.add_parser("upgrade", help="apply the migrations (qvl up does this by itself)")
    db_up.set_defaults(func=cmd_db_upgrade)

    models = sub.add_parser("models", help="the models qvl knows: engine, box format, memory, source")
    models.set_defaults(func=cmd_models)

    model = sub.add_parser("model", help="model weights").add_subparsers(metavar="ACTION")
    tiny = model.add_parser("make-tiny", help="write a tiny random-weight model to smoke-test without a GPU")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--family", default=Family.QWEN2_VL.value,
                      choices=[f.value for f in Family if f is not Family.QWEN_VL])
    tiny.set_defaults(func=cmd_make_tiny)

    download = model.add_parser("download", help="fetch a model's weights (Hugging Face or modelscope:ID)")
    download.add_argument("model", help="e.g. Qwen/Qwen3-VL-2B-Instruct or modelscope:qwen/Qwen-VL-Chat")
    download.set_defaults(func=cmd_model_download)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(metavar="WHAT")
    queue = bench.add_parser("queue", help="per-turn overhead vs a raw Celery round trip")
    queue.add_argument("--turns", type=int, default=200, help="turns per measurement")
    queue.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    queue.set_defaults(func=cmd_bench_queue)
    serve = bench.add_parser("serve", help="many conversations at once through one worker (openai or transformers)")
    serve.add_argument("--engine", choices=["openai", "transformers"], default="openai")
    serve.add_argument("--conversations", type=int, nargs="+", help="default: openai 1 8 32 64, transformers 2 4 8 16")
    serve.add_argument("--turns", type=int, default=None, help="turns per conversation (default: openai 3, transformers 1)")
    serve.add_argument("--latency", type=float, default=1.0, help="openai: the stand-in server's seconds per answer")
    serve.add_argument("--tokens", type=int, default=64, help="transformers: tokens in every answer")
    serve.set_defaults(func=cmd_bench_serve)
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


def cmd_up(args: argparse.Namespace) -> int:
    from cli.service import up
    from qvl.settings import Settings

    return up(Settings())


def cmd_worker(args: argparse.Namespace) -> int:
    from cli.service import prepare, run_worker
    from qvl.queue import checked_redis_url
    from qvl.settings import Settings

    settings = Settings()
    url = checked_redis_url(settings)  # in seconds, before migrating or loading a model
    prepare(settings)
    return run_worker(settings, url, concurrency=args.concurrency, pool=args.pool)


def _run_frontend(module: str, name: str, *, install: str | None) -> int:
    """Run one chat frontend in this process: Redis is checked first (in seconds, one line
    naming REDIS_URL), before connecting to the platform; a missing extra says what to install."""
    import asyncio
    import importlib

    from qvl.queue import checked_redis_url
    from qvl.settings import Settings

    settings = Settings()
    url = checked_redis_url(settings)
    try:
        run = importlib.import_module(module).run
    except ImportError as exc:
        if install is None:
            raise
        raise UserFacingError(f"the {name} frontend cannot be loaded ({exc}): {install}") from exc
    asyncio.run(run(settings, redis_url=url))
    return 0


def cmd_discord(args: argparse.Namespace) -> int:
    return _run_frontend("bots.discord.bot", "Discord", install=None)


def cmd_wechat(args: argparse.Namespace) -> int:
    return _run_frontend("bots.wechat.bot", "WeChat",
                         install="pip install -e '.[wechat]' (in an environment of its own, see README)")


def cmd_web(args: argparse.Namespace) -> int:
    import asyncio

    from bots.web.app import run
    from bots.web.auth import make_login_link
    from qvl.queue import checked_redis_url
    from qvl.settings import Settings

    settings = Settings()
    url = checked_redis_url(settings)  # in seconds, naming REDIS_URL
    print(f"qvl web on http://{settings.web_host}:{settings.web_port}")
    print(f"  sign in (once, within a day): {make_login_link(settings, url)}")
    asyncio.run(run(settings, redis_url=url))
    return 0


def _key_sessions():
    from cli.service import database_setting
    from qvl.settings import Settings
    from storage.db import make_engine, make_sessionmaker, upgrade

    settings = Settings()
    upgrade(settings.resolved_database_url(), setting=database_setting(settings))
    return make_sessionmaker(make_engine(settings.resolved_database_url()))


def cmd_keys_create(args: argparse.Namespace) -> int:
    from storage import keys

    with _key_sessions()() as session:
        try:
            key, secret = keys.create_key(session=session, name=args.name, rate_limit=args.rate_limit)
        except ValueError as exc:
            raise UserFacingError(str(exc)) from exc
        session.commit()
        print(f"created key {key.name!r} (id {key.id}); its secret, shown this once:")
        print(secret)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from storage import keys

    with _key_sessions()() as session:
        found = keys.list_keys(session=session)
        if not found:
            print("no keys yet: qvl keys create NAME")
        for key in found:
            limit = f"{key.rate_limit}/window" if key.rate_limit else "no own limit"
            state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            print(f"{key.id:>4}  {key.name:<24} {key.prefix}…  {limit:<14} created {key.created_at:%Y-%m-%d %H:%M}  {state}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from storage import keys

    with _key_sessions()() as session:
        key = keys.find_key(session=session, name_or_id=args.name)
        if key is None:
            raise UserFacingError(f"no key named {args.name!r} (qvl keys list)")
        changed = keys.revoke_key(session=session, key=key)
        session.commit()
        print(f"revoked key {key.name!r}" if changed else f"key {key.name!r} was revoked already")
    return 0


def cmd_wecom(args: argparse.Namespace) -> int:
    return _run_frontend("bots.wecom.bot", "WeCom", install="pip install -e '.[wecom]'")


def cmd_chat(args: argparse.Namespace) -> int:
    import asyncio

    from bots.terminal import chat
    from qvl.queue import checked_redis_url
    from qvl.settings import Settings

    settings = Settings()
    checked_redis_url(settings)  # one line naming REDIS_URL (or `qvl up`) when it cannot be reached
    text = sys.stdin.read() if args.text == "-" else args.text
    return asyncio.run(chat(settings, text=text, images=args.images, reset=args.reset,
                            out_dir=args.out_dir, user=args.user, timeout_s=args.timeout))


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from cli.service import database_setting
    from qvl.settings import Settings
    from storage.db import current_revision, upgrade

    settings = Settings()
    url = settings.resolved_database_url()
    upgrade(url, setting=database_setting(settings))
    print(f"database at revision {current_revision(url)}")
    return 0


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from worker.engines.tiny import make_tiny

    path = make_tiny(args.directory, args.family)
    print(f"wrote a tiny random-weight {args.family} model to {path}")
    print(f"use it: QVL_MODEL={path} qvl up")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from qvl.models import engine_and_family, table
    from qvl.settings import Settings

    settings = Settings()
    print(table())
    engine, family = engine_and_family(settings)
    print(f"\nin force: QVL_MODEL={settings.model} → engine {engine}, family {family or '(from the model)'}")
    return 0


def cmd_model_download(args: argparse.Namespace) -> int:
    from qvl.models import engine_and_family
    from qvl.settings import Settings
    from worker.engines.remote_code import UntrustedCode, pinned_revision
    from worker.engines.weights import resolve_model

    settings = Settings()
    revision = None
    # Qwen-VL-Chat's code runs only at the trusted revision: fetch that one (QVL_ENGINE counts too).
    if engine_and_family(settings.model_copy(update={"model": args.model}))[0] == "qwen-vl":
        try:
            revision = pinned_revision(args.model, settings.qwen_vl_trusted)
        except UntrustedCode:
            print(f"note: {args.model} is not on QVL_QWEN_VL_TRUSTED; fetching the latest revision, "
                  "which the qwen-vl engine will refuse to run until you add it", file=sys.stderr)
    path = resolve_model(args.model, cache_dir=settings.data_dir / "models", revision=revision)
    print(f"{args.model}{'@' + revision if revision else ''} is at {path}")
    print(f"use it: QVL_MODEL={args.model} qvl up   (or QVL_MODEL={path})")
    return 0


def cmd_bench_queue(args: argparse.Namespace) -> int:
    from cli.bench import bench_queue
    from qvl.settings import Settings

    return bench_queue(Settings(), turns=args.turns, concurrency=args.concurrency)


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from cli.bench_serve import bench_serve
    from qvl.settings import Settings

    openai = args.engine == "openai"
    conversations = args.conversations or ([1, 8, 32, 64] if openai else [2, 4, 8, 16])
    turns = args.turns or (3 if openai else 1)
    return bench_serve(Settings(), engine=args.engine, conversations=conversations, turns=turns,
                       latency_s=args.latency, tokens=args.tokens)


if __name__ == "__main__":
    sys.exit(main())
