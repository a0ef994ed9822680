"""The ``whisper-api`` console command.

whisper-api keys create --name NAME [LIMITS]   # prints the new key as the last line
whisper-api keys update KEY_ID LIMITS          # a key's own fair-use limits
whisper-api keys list
whisper-api keys revoke KEY_ID

LIMITS: --rate-limit-per-minute N --max-pending-jobs N --max-sync-waits N
        --quota-audio-seconds-per-day N (0: unlimited; "default": the operator's setting)
whisper-api worker                    # run a transcription worker (it also sends webhooks)
whisper-api webhooks                  # run a webhook dispatcher on its own
whisper-api dev                       # the whole service locally (see devtools/devstack.py)
whisper-api models demo PATH          # write the offline demo checkpoint

Client commands (a server's URL and an API key; see shared/client_cli.py):

whisper-api transcribe FILE... [--model M] [--language L] [--task T] [--format srt] [-o OUT]
whisper-api jobs list|show|result|cancel|delete
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from shared import client_cli, credentials
from shared.errors import WhisperApiError
from shared.redis_client import connect
from shared.settings import redis_settings


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _keys(args: argparse.Namespace) -> int:
    r = connect(redis_settings())
    if args.action == "create":
        key, plaintext = credentials.create_key(r, args.name)
        if _limit_values(args):
            credentials.set_limits(r, key.id, _limit_values(args))
        print(f"Created API key {key.id} ({key.name}). It is shown only once; store it now:")
        print(plaintext)
    elif args.action == "update":
        key = credentials.set_limits(r, args.key_id, _limit_values(args))
        own = ", ".join(f"{name}={value}" for name, value in key.limits.items()) or "none"
        print(f"Updated API key {key.id} ({key.name}); its own limits: {own}")
    elif args.action == "list":
        print(f"{'ID':<14}{'NAME':<24}{'CREATED (UTC)':<21}REVOKED (UTC)")
        for key in credentials.list_keys(r):
            print(f"{key.id:<14}{key.name[:23]:<24}{_when(key.created_at):<21}{_when(key.revoked_at)}")
    else:
        key = credentials.revoke_key(r, args.key_id)
        print(f"Revoked API key {key.id} ({key.name}); its tokens are refused from now on.")
    return 0


def _limit(raw: str) -> int | None:
    if raw == "default":
        return None
    if not raw.isdigit():
        raise argparse.ArgumentTypeError("a whole number >= 0, or 'default'")
    return int(raw)


def _limit_values(args: argparse.Namespace) -> dict[str, int | None]:
    """The limits given on the command line (absent flags leave a limit as it is)."""
    given = {name: getattr(args, name, _UNSET) for name in credentials.LIMIT_FIELDS}
    return {name: value for name, value in given.items() if value is not _UNSET}


_UNSET: Any = object()


def _add_limit_flags(command: argparse.ArgumentParser) -> None:
    for name in credentials.LIMIT_FIELDS:
        command.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_limit, default=_UNSET)


def _worker(_: argparse.Namespace) -> int:
    from functions.transcribe.main import main as run_worker

    run_worker()
    return 0


def _webhooks(_: argparse.Namespace) -> int:
    from shared.dispatcher import run_standalone

    run_standalone()
    return 0


def _dev(args: argparse.Namespace) -> int:
    from devtools.devstack import run

    return run(port=args.port, data_dir=args.data_dir)


def _models(args: argparse.Namespace) -> int:
    from devtools.demo_model import build_checkpoint

    build_checkpoint(args.path)
    print(f"Wrote the demo checkpoint to {args.path}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="whisper-api", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = top.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="manage API keys")
    key_actions = keys.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    _add_limit_flags(create)
    update = key_actions.add_parser("update", help="set a key's own fair-use limits")
    update.add_argument("key_id")
    _add_limit_flags(update)
    key_actions.add_parser("list", help="list keys (never their secrets)")
    revoke = key_actions.add_parser("revoke", help="revoke a key and its tokens")
    revoke.add_argument("key_id")
    keys.set_defaults(run=_keys)

    sub.add_parser("worker", help="run a transcription worker").set_defaults(run=_worker)
    sub.add_parser("webhooks", help="run a webhook dispatcher on its own").set_defaults(run=_webhooks)

    dev = sub.add_parser("dev", help="run Redis, S3, the functions and a worker locally")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--data-dir", default=".data")
    dev.set_defaults(run=_dev)

    models = sub.add_parser("models", help="model utilities")
    model_actions = models.add_subparsers(dest="action", required=True)
    demo = model_actions.add_parser("demo", help="write the offline demo checkpoint")
    demo.add_argument("path")
    models.set_defaults(run=_models)

    client_cli.add_commands(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except WhisperApiError as exc:
        print(f"whisper-api: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
