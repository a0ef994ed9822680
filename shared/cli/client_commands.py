"""The client commands of ``whisper-api``, for people and scripts (the operator commands are in
``shared/cli/admin.py``):

whisper-api transcribe FILE... [--model M] [--language L] [--task T] [--format srt] [-o OUT]
whisper-api jobs list|show ID|result ID|cancel ID|delete ID

The server and key come from ``--url``/``--api-key`` or ``WHISPER_API_URL``/``WHISPER_API_KEY``.
``--json`` prints the API's JSON on stdout; progress bars go to stderr. The exit status is 0 on
success, 1 when the API refused something or a job failed (its message on stderr), 130 after
Ctrl-C: during an upload nothing is left on the server; while waiting the job keeps running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from shared.cli.client import ApiError, Client, SseEvent, follow

DEFAULT_URL = "http://127.0.0.1:8080"
FORMATS = ("json", "text", "srt", "vtt", "tsv", "verbose_json", "rttm")
_EXTENSIONS = {"text": "txt", "verbose_json": "json"}
#: How long an interrupted upload's job is looked for (the server may still be storing it).
_SWEEP_SECONDS = 10.0
INTERRUPTED = 130


class Bar:
    """A one-line progress bar on stderr: redrawn in place on a terminal, a line per tenth
    elsewhere (logs, CI), nothing when quiet."""

    def __init__(self, label: str, out: TextIO | None, width: int = 30) -> None:
        self.label, self.out, self.width = label, out, width
        self._shown: tuple[int, str] | None = None

    def update(self, fraction: float, note: str = "") -> None:
        if self.out is None:
            return
        fraction = min(1.0, max(0.0, fraction))
        tty = self.out.isatty()
        step = (round(fraction * 100) if tty else int(fraction * 10), note)
        if step == self._shown:
            return
        self._shown = step
        filled = round(fraction * self.width)
        line = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {fraction * 100:3.0f}% {note}"
        self.out.write(f"\r{line.rstrip()}\x1b[K" if tty else f"{line.rstrip()}\n")
        self.out.flush()

    def done(self, note: str = "") -> None:
        self.update(1.0, note)
        if self.out is not None and self.out.isatty():
            self.out.write("\n")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url.rstrip("/"), args.api_key)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _destination(source: Path, fmt: str, output: str | None, many: bool) -> Path | None:
    """Where a result goes: next to its input by default; ``-o`` is a file (one input, ``-``
    for stdout) or a directory (several inputs, or an existing directory)."""
    name = f"{source.stem}.{_EXTENSIONS.get(fmt, fmt)}"
    if output is None:
        return source.with_name(name)
    if output == "-":
        return None
    target = Path(output)
    return target / name if many or target.is_dir() else target


def _write(target: Path | None, body: bytes) -> None:
    if target is None:
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
        return
    # As curl: a symlink's destination is what gets written, and a target that is not a regular
    # file (/dev/null, a FIFO, a terminal) is written in place; renaming over it would replace
    # the device itself (as root, /dev/null became a regular file).
    target = Path(os.path.realpath(target))
    if target.exists() and not target.is_file():
        with target.open("wb") as out:
            out.write(body)
        return
    # A regular file is replaced whole: a reader never sees half a transcript.
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    partial.write_bytes(body)
    partial.replace(target)


def _job_fields(args: argparse.Namespace) -> dict[str, str]:
    fields = {"output_format": args.format, "task": args.task}
    if args.model:
        fields["model"] = args.model
    if args.language:
        fields["language"] = args.language
    if args.word_timestamps:
        fields["word_timestamps"] = "true"
    if args.diarize or args.speakers:
        fields["diarize"] = "true"
    if args.speakers:
        fields["num_speakers"] = str(args.speakers)
    return fields


def _sweep(client: Client, source: Path, started: float) -> None:
    """After Ctrl-C once the whole body was sent: the server may have made the job anyway;
    find it (same file name and size, created since) and delete it."""
    size = source.stat().st_size
    deadline = time.monotonic() + _SWEEP_SECONDS
    while time.monotonic() < deadline:
        jobs = client.json("GET", "/transcribe?limit=20")["jobs"]
        mine = [j for j in jobs if j["filename"] == source.name and j["bytes"] == size]
        mine = [j for j in mine if j["created_at"] >= started - 1]
        for job in mine:
            client.request("DELETE", f"/transcribe/{job['id']}")
        if mine:
            return
        time.sleep(0.5)


def _upload(client: Client, source: Path, args: argparse.Namespace, err: TextIO | None) -> dict[str, Any]:
    bar = Bar(f"upload     {source.name}", err)
    sent_all = False

    def progress(sent: int, total: int) -> None:
        nonlocal sent_all
        sent_all = sent >= total
        bar.update(sent / total if total else 1.0, f"{_mb(sent)}/{_mb(total)}")

    started = time.time()
    try:
        job = client.submit(str(source), _job_fields(args), progress)
    except KeyboardInterrupt:
        if sent_all:
            _sweep(client, source, started)
        print(f"\nwhisper-api: upload of {source} canceled; no job was left on the server", file=sys.stderr)
        raise
    bar.done(f"job {job['id']}")
    return job


def _wait(client: Client, job: dict[str, Any], err: TextIO | None) -> dict[str, Any]:
    bar = Bar(f"transcribe {job.get('filename') or job['id']}", err)

    def show(event: SseEvent) -> None:
        if event.name in ("status", "progress", "end"):
            bar.update(float(event.data.get("progress") or 0.0), str(event.data.get("status", "")))

    final = follow(client, job["id"], show)
    if final.get("status") == "completed":
        bar.done("completed")
    return final


def _transcribe_one(client: Client, source: Path, args: argparse.Namespace, many: bool) -> dict[str, Any]:
    err = None if args.quiet else sys.stderr
    job = _upload(client, source, args, err)
    try:
        final = _wait(client, job, err)
    except KeyboardInterrupt:
        print(
            f"\nwhisper-api: job {job['id']} keeps running; see it with: whisper-api jobs show {job['id']}",
            file=sys.stderr,
        )
        raise
    if final.get("status") != "completed":
        reason = final.get("error") or final.get("status")
        raise ApiError(f"job {job['id']} for {source} {final.get('status')}: {reason}")
    _, _, body = client.request("GET", f"/transcribe/{job['id']}/result?format={args.format}")
    target = _destination(source, args.format, args.output, many)
    _write(target, body)
    return {"file": str(source), "job_id": job["id"], "output": str(target) if target else "-"}


def _transcribe(args: argparse.Namespace) -> int:
    client = _client(args)
    sources = [Path(name) for name in args.files]
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        raise ApiError(f"no such file: {', '.join(missing)}")
    outcomes, failed = [], 0
    for source in sources:
        try:
            outcome = _transcribe_one(client, source, args, len(sources) > 1)
        except ApiError as exc:
            print(f"whisper-api: {exc}", file=sys.stderr)
            failed += 1
            continue
        outcomes.append(outcome)
        if not args.json and outcome["output"] != "-":
            print(f"{outcome['file']} -> {outcome['output']} (job {outcome['job_id']})")
    if args.json:
        _print_json(outcomes)
    return 1 if failed else 0


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _jobs_list(client: Client, args: argparse.Namespace) -> None:
    query = f"?limit={args.limit}" + (f"&cursor={args.cursor}" if args.cursor else "")
    page = client.json("GET", f"/transcribe{query}")
    if args.json:
        _print_json(page)
        return
    print(f"{'ID':<30}{'STATUS':<12}{'AUDIO':>9}  {'CREATED (UTC)':<21}FILE")
    for job in page["jobs"]:
        audio = f"{job['duration']:.1f}s" if job.get("duration") is not None else "-"
        row = f"{job['id']:<30}{job['status']:<12}{audio:>9}  {_when(job['created_at']):<21}"
        print(row + (job.get("filename") or "-"))
    if page["next_cursor"]:
        print(f"more: whisper-api jobs list --cursor {page['next_cursor']}")


def _jobs_show(client: Client, args: argparse.Namespace) -> None:
    job = client.json("GET", f"/transcribe/{args.job_id}")
    if args.json:
        _print_json(job)
        return
    for name in ("id", "status", "filename", "duration", "model", "language", "task", "error"):
        print(f"{name + ':':<13}{job.get(name) if job.get(name) is not None else '-'}")
    print(f"{'created:':<13}{_when(job['created_at'])}")
    print(f"{'completed:':<13}{_when(job.get('completed_at'))}")


def _jobs_result(client: Client, args: argparse.Namespace) -> None:
    query = f"?format={args.format}" if args.format else ""
    _, _, body = client.request("GET", f"/transcribe/{args.job_id}/result{query}")
    _write(Path(args.output) if args.output and args.output != "-" else None, body)


def _jobs_cancel(client: Client, args: argparse.Namespace) -> None:
    job = client.json("POST", f"/transcribe/{args.job_id}/cancel")
    _print_json(job) if args.json else print(f"canceled job {job['id']}")


def _jobs_delete(client: Client, args: argparse.Namespace) -> None:
    client.request("DELETE", f"/transcribe/{args.job_id}")
    _print_json({"id": args.job_id, "deleted": True}) if args.json else print(f"deleted job {args.job_id}")


_JOB_ACTIONS: dict[str, Callable[[Client, argparse.Namespace], None]] = {
    "list": _jobs_list,
    "show": _jobs_show,
    "result": _jobs_result,
    "cancel": _jobs_cancel,
    "delete": _jobs_delete,
}


def _jobs(args: argparse.Namespace) -> int:
    _JOB_ACTIONS[args.action](_client(args), args)
    return 0


def run(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a client command: the API's message and status 1 on refusal, 130 on Ctrl-C."""
    try:
        return command(args)
    except ApiError as exc:
        print(f"whisper-api: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return INTERRUPTED


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=os.environ.get("WHISPER_API_URL", DEFAULT_URL), help="base URL (WHISPER_API_URL)"
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("WHISPER_API_KEY", ""), help="API key (WHISPER_API_KEY)"
    )
    parser.add_argument("--json", action="store_true", help="print the API's JSON on stdout")


def add_commands(sub: Any) -> None:
    """Wire ``transcribe`` and ``jobs`` into the ``whisper-api`` parser."""
    transcribe = sub.add_parser("transcribe", help="transcribe files (client: needs a server and a key)")
    transcribe.add_argument("files", nargs="+", metavar="FILE")
    transcribe.add_argument("--model", help="a name from GET /v1/models (default: the server's)")
    transcribe.add_argument("--language", help="a code or name (default: detect)")
    transcribe.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    transcribe.add_argument("--format", choices=FORMATS, default="srt")
    transcribe.add_argument("--word-timestamps", action="store_true", help="time each word")
    transcribe.add_argument("--diarize", action="store_true", help="label who speaks when (SPEAKER_00, ...)")
    transcribe.add_argument(
        "--speakers", type=int, metavar="N", help="the number of speakers (implies --diarize)"
    )
    transcribe.add_argument("-o", "--output", help="output file ('-' for stdout), or a directory")
    transcribe.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _connection_options(transcribe)
    transcribe.set_defaults(run=lambda args: run(_transcribe, args))

    jobs = sub.add_parser("jobs", help="list and manage your jobs (client)")
    actions = jobs.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="your jobs, newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--cursor")
    _connection_options(listing)
    for name, text in (
        ("show", "one job"),
        ("cancel", "stop a job"),
        ("delete", "remove a job and its files"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("job_id")
        _connection_options(action)
    result = actions.add_parser("result", help="a job's transcript")
    result.add_argument("job_id")
    result.add_argument("--format", choices=FORMATS)
    result.add_argument("-o", "--output", help="file to write (default: stdout)")
    _connection_options(result)
    jobs.set_defaults(run=lambda args: run(_jobs, args))
