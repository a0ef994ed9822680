"""``whisper-api models pull NAME``: an official checkpoint into ``WHISPER_MODEL_DIR``, checked.

whisper publishes each checkpoint at ``.../models/<sha256>/<file>.pt``: the path names the
file's SHA-256. The download streams to ``.NAME.pt.part`` beside the target, hashing as it
goes, and becomes ``NAME.pt`` only when the hash matches, so a worker never sees a partial or
corrupt file. ``--mirror`` serves the same ``<sha256>/<file>.pt`` scheme from elsewhere (an
air-gapped site's own copy); ``--url`` takes any URL of that scheme.

The URL table is read from the installed whisper package's source (``whisper._MODELS``)
without importing it, so the command starts without loading torch.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
import urllib.request
from pathlib import Path
from typing import TextIO

from shared.core.errors import WhisperApiError

CHUNK = 1 << 20


class PullError(WhisperApiError):
    """A checkpoint could not be fetched, or was not the one published."""


def official_urls() -> dict[str, str]:
    """whisper's own name -> URL table, from its source."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or spec.origin is None:
        raise PullError("openai-whisper is not installed here; run this where the worker runs")
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_MODELS" for t in node.targets):
            table: dict[str, str] = ast.literal_eval(node.value)
            return table
    raise PullError("whisper's model table (_MODELS) was not found in its source")


def source_url(name: str, url: str | None = None, mirror: str | None = None) -> str:
    """Where to fetch ``name`` from: ``url``, else whisper's published URL (on ``mirror``)."""
    if url is None:
        table = official_urls()
        if name not in table:
            raise PullError(f"{name!r} is not an official model; choose one of {', '.join(table)}")
        url = table[name]
    if mirror:
        sha, filename = url.rstrip("/").split("/")[-2:]
        url = f"{mirror.rstrip('/')}/{sha}/{filename}"
    return url


def _expected_sha(url: str) -> str:
    sha = url.rstrip("/").split("/")[-2].lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise PullError(f"{url} does not follow whisper's <sha256>/<file>.pt scheme")
    return sha


def _progress(out: TextIO, label: str, done: int, total: int | None) -> None:
    size = f"{done / 1e6:.1f}" + (f"/{total / 1e6:.1f} MB" if total else " MB")
    percent = f"{100 * done // total:3d}% " if total else ""
    bar = "#" * (30 * done // total) if total else ""
    out.write(f"\r{label} [{bar:<30}] {percent}{size}")
    out.flush()


def pull(name: str, model_dir: Path, url: str, out: TextIO = sys.stderr, timeout: float = 60) -> Path:
    """Fetch ``url`` into ``model_dir/NAME.pt`` with a progress bar on ``out``; its SHA-256 must
    match the one in the URL. An existing file with the right hash is kept as it is."""
    expected = _expected_sha(url)
    target = model_dir / f"{name}.pt"
    if target.exists() and _sha256(target) == expected:
        out.write(f"{target} is already there (sha256 {expected[:12]}...)\n")
        return target
    model_dir.mkdir(parents=True, exist_ok=True)
    part = model_dir / f".{name}.pt.part"
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, part.open("wb") as fh:  # noqa: S310
            total = int(resp.headers.get("Content-Length") or 0) or None
            done = 0
            while chunk := resp.read(CHUNK):
                fh.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                _progress(out, f"{name}.pt", done, total)
        out.write("\n")
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise PullError(f"could not fetch {url}: {exc}") from exc
    if digest.hexdigest() != expected:
        part.unlink()
        got = digest.hexdigest()
        raise PullError(f"{url}: sha256 {got} is not the published {expected}; nothing was kept")
    part.replace(target)
    out.write(f"{target}: sha256 {expected[:12]}... checked\n")
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
