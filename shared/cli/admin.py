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
whisper-api models pull NAME [NAME..] # official checkpoints into WHISPER_MODEL_DIR, SHA-256 checked
whisper-api models list               # models on disk here, loaded by workers, offered by the API
whisper-api storage orphans [--remove] [--min-age SECONDS]
whisper-api storage inbox-expiry [--days N]    # a lifecycle rule: inbox objects expire (deploys run it)
                                      # stored audio and results no job record points at
whisper-api redis migrate [--dry-run] # a Redis of a release before the cluster layout, renamed

Client commands (a server's URL and an API key; see shared/cli/client_commands.py):

whisper-api transcribe FILE... [--model M] [--language L] [--task T] [--format srt] [-o OUT]
whisper-api jobs list|show|result|cancel|delete
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.api import credentials
from shared.cli import client_commands
from shared.core.errors import WhisperApiError
from shared.core.redis_client import connect
from shared.core.settings import redis_settings
from shared.jobs import quota


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
    given = {name: getattr(args, name, _UNSET) for name in quota.LIMIT_FIELDS}
    return {name: value for name, value in given.items() if value is not _UNSET}


_UNSET: Any = object()


def _add_limit_flags(command: argparse.ArgumentParser) -> None:
    for name in quota.LIMIT_FIELDS:
        command.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_limit, default=_UNSET)


def _worker(_: argparse.Namespace) -> int:
    from functions.transcribe.main import main as run_worker

    run_worker()
    return 0


def _webhooks(_: argparse.Namespace) -> int:
    from shared.delivery.dispatcher import run_standalone

    run_standalone()
    return 0


def _dev(args: argparse.Namespace) -> int:
    from devtools.devstack import run

    return run(port=args.port, data_dir=args.data_dir)


def _models(args: argparse.Namespace) -> int:
    if args.action == "pull":
        return _models_pull(args)
    if args.action == "list":
        return _models_list()
    if args.action == "convert":
        return _models_convert(args)
    try:
        from devtools.demo_model import build_checkpoint
    except ImportError:  # the images carry the runtime only
        print(
            "whisper-api: the demo checkpoint comes with the development tools (devtools/); "
            "run this from a source checkout and copy the file into WHISPER_MODEL_DIR",
            file=sys.stderr,
        )
        return 2
    build_checkpoint(args.path)
    print(f"Wrote the demo checkpoint to {args.path}")
    return 0


def _model_dir(args: argparse.Namespace) -> Path | None:
    """``--dir`` or WHISPER_MODEL_DIR; None (and why, on stderr) when neither is set."""
    from shared.core.settings import catalog_settings

    model_dir = args.dir or catalog_settings().whisper_model_dir
    if model_dir is None:
        print("whisper-api: set WHISPER_MODEL_DIR (or pass --dir) to say where models are", file=sys.stderr)
        return None
    return Path(model_dir)


def _models_pull(args: argparse.Namespace) -> int:
    from shared.ops import model_pull

    model_dir = _model_dir(args)
    if model_dir is None:
        return 2
    if args.url and len(args.names) != 1:
        print("whisper-api: --url fetches one model; name just one", file=sys.stderr)
        return 2
    for name in args.names:
        model_pull.pull(name, model_dir, model_pull.source_url(name, args.url, args.mirror))
    return 0


def _models_convert(args: argparse.Namespace) -> int:
    import time

    from shared.engine.convert import converted_path, ensure_converted, is_converted

    model_dir = _model_dir(args)
    if model_dir is None:
        return 2
    for name in args.names:
        checkpoint = model_dir / f"{name}.pt"
        if not checkpoint.is_file():
            print(
                f"whisper-api: {checkpoint} does not exist; `whisper-api models pull {name}` fetches "
                "an official one",
                file=sys.stderr,
            )
            return 1
        target = converted_path(model_dir, name, checkpoint)
        if is_converted(target):
            print(f"{name}: already converted ({target})")
            continue
        started = time.monotonic()

        def step(what: str, name: str = name, started: float = started) -> None:
            print(f"{name}: [{time.monotonic() - started:6.1f} s] {what}", flush=True)

        try:
            ensure_converted(model_dir, name, checkpoint, step)
        except OSError as exc:
            print(f"whisper-api: cannot write the CTranslate2 cache in {model_dir}: {exc}", file=sys.stderr)
            return 1
    return 0


def _models_list() -> int:
    from shared.core.settings import catalog_settings
    from shared.ops import model_ads
    from shared.ops.catalog import allowed_models

    settings = catalog_settings()
    offer = model_ads.current(connect(settings), 3 * settings.worker_heartbeat_seconds)
    offered = set(allowed_models(settings))
    model_dir = settings.whisper_model_dir
    here = {p.stem for p in model_dir.glob("*.pt")} if model_dir and model_dir.is_dir() else set()
    names = sorted(offered | here | (offer.loaded if offer else set()))
    source = f"{offer.workers} live workers advertise" if offer else "no worker advertises; configured list"
    if offer and offer.engines:
        source += f"; engine {', '.join(sorted(offer.engines))}"
    print(f"{'NAME':<18}{'ON DISK HERE':<14}{'LOADED':<8}OFFERED  ({source})")
    for name in names:
        path = model_dir / f"{name}.pt" if model_dir else None
        size = f"{path.stat().st_size / 1e6:.1f} MB" if path and path.exists() else "-"
        loaded = "yes" if offer and name in offer.loaded else "-"
        print(f"{name:<18}{size:<14}{loaded:<8}{'yes' if name in offered else '-'}")
    return 0


def _storage(args: argparse.Namespace) -> int:
    from shared.core.settings import StorageSettings, worker_settings
    from shared.core.storage import BlobStore
    from shared.ops import stack

    if args.action == "inbox-expiry":
        plain = StorageSettings()
        BlobStore(plain, plain.s3_inbox_bucket).expire_after(args.days)
        print(f"bucket {plain.s3_inbox_bucket}: objects expire {args.days} days after they were written")
        return 0
    settings = worker_settings()
    r, store = connect(settings), BlobStore(settings)
    count = total = 0
    for name, size in list(stack.orphans(r, store, args.min_age)):
        print(f"{name}\t{size}")
        count, total = count + 1, total + size
        if args.remove:
            store.delete(name)
    done = "removed" if args.remove else "found"
    print(f"{count} objects without a job record {done} ({total / 1e6:.1f} MB)", file=sys.stderr)
    if args.remove and stack.lost(r, store):
        stack_id = stack.acknowledge(r, store)
        print(f"Redis and storage paired again as stack {stack_id}: the lost work is gone", file=sys.stderr)
    return 0


def _redis(args: argparse.Namespace) -> int:
    from shared.ops import migrate

    settings = redis_settings()
    migrate.refuse_cluster(settings.redis_url)  # before connecting: a cluster URL is no Redis to read
    report = migrate.migrate(connect(settings), settings.redis_url, dry_run=args.dry_run)
    for line in migrate.describe(report, args.dry_run):
        print(line)
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
    pull = model_actions.add_parser("pull", help="download official checkpoints, SHA-256 checked")
    pull.add_argument("names", nargs="+", metavar="NAME")
    pull.add_argument("--dir", type=Path, help="where to put them (default: WHISPER_MODEL_DIR)")
    pull.add_argument("--mirror", help="a server with whisper's <sha256>/<file>.pt layout")
    pull.add_argument("--url", help="fetch this URL (of that layout) instead of the published one")
    model_actions.add_parser("list", help="models on disk here, loaded by workers, offered by the API")
    convert = model_actions.add_parser(
        "convert", help="convert checkpoints for the faster-whisper engine ahead of time (CTranslate2)"
    )
    convert.add_argument("names", nargs="+", metavar="NAME")
    convert.add_argument("--dir", type=Path, help="where NAME.pt is (default: WHISPER_MODEL_DIR)")
    models.set_defaults(run=_models)

    storage = sub.add_parser("storage", help="storage upkeep")
    storage_actions = storage.add_subparsers(dest="action", required=True)
    found = storage_actions.add_parser("orphans", help="stored audio and results no job record points at")
    found.add_argument(
        "--remove", action="store_true", help="remove them (and, after a Redis that forgot, re-pair)"
    )
    found.add_argument("--min-age", type=float, default=3600, help="only objects at least this old (seconds)")
    expiry = storage_actions.add_parser(
        "inbox-expiry", help="a lifecycle rule on the inbox bucket: uploads nobody completed expire"
    )
    expiry.add_argument("--days", type=int, default=1, help="days after which an inbox object expires")
    storage.set_defaults(run=_storage)

    upkeep = sub.add_parser("redis", help="Redis upkeep")
    redis_actions = upkeep.add_subparsers(dest="action", required=True)
    move = redis_actions.add_parser("migrate", help="rename a Redis of a release before the cluster layout")
    move.add_argument("--dry-run", action="store_true", help="only say what would be moved")
    upkeep.set_defaults(run=_redis)

    client_commands.add_commands(sub)
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
