"""The environment a worker's process computes in, set before it starts.

Two libraries read their settings once, as they load, so no code in the process can change them:

- The C allocator: jemalloc, preloaded (``LD_PRELOAD``) where it is installed, with big blocks
  kept for reuse (``MALLOC_CONF``): CTranslate2's encoder ran twice as fast on it
  (``shared.engine.memory`` says why).
- libgomp, the OpenMP runtime of torch, which CTranslate2 shares once torch is loaded (its
  ``GOMP_*`` symbols resolve to torch's copy): threads spin up to 10 million turns between
  kernels (about 0.1 s, then they sleep, so an idle worker burns nothing). libgomp's default
  spins 1,000 turns only once it manages more threads than there are CPUs, as it does when a
  CTranslate2 model's team stands beside torch's, and every small kernel of a decoding step then
  waited for its threads to wake: the faster-whisper engine decoded 11 chunks at ``base`` in
  4.2 s instead of 2.6-3.1 s; the openai-whisper engine runs as fast either way (bench/README.md,
  "Engines").

So the pull worker re-executes itself once, first thing, with what is missing added
(``functions.transcribe.main``); the worker image sets the same variables, which covers the
push worker too. Whatever the operator set is kept: ``LD_PRELOAD`` set, even empty, means their
choice of allocator (``LD_PRELOAD=`` runs glibc's malloc).
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Mapping

#: The library a worker preloads (its soname: the dynamic loader finds it on any architecture).
JEMALLOC = "libjemalloc.so.2"
#: Big blocks kept for reuse; a background thread returns what stays unused.
MALLOC_CONF = "oversize_threshold:0,background_thread:true"
#: How libgomp's threads wait between kernels (see above).
OPENMP = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "10000000"}


def worker_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """``environ`` with what a worker's process needs added, or None when nothing is missing."""
    added = {key: value for key, value in OPENMP.items() if key not in environ}
    if "LD_PRELOAD" not in environ and _jemalloc_installed():
        added["LD_PRELOAD"] = JEMALLOC
        if "MALLOC_CONF" not in environ:
            added["MALLOC_CONF"] = MALLOC_CONF
    return {**environ, **added} if added else None


def _jemalloc_installed() -> bool:
    return sys.platform.startswith("linux") and ctypes.util.find_library("jemalloc") is not None


def reexec() -> None:
    """Replace this process (same pid, same arguments) by one in ``worker_env``, or return when
    nothing is missing. Call it first thing, before any thread starts."""
    env = worker_env(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)  # noqa: S606 (the same program)
