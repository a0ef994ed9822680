"""Keep the C heap from creeping while hours of audio stream through a worker.

Audio pieces, chunks and mel spectrograms are allocated and freed by the megabyte. glibc's
malloc raises its mmap threshold each time such a block is freed, after which blocks of that size
come from per-thread heaps that are rarely handed back: a worker's RSS then grew with the length
of the recording (measured, bench/engine.py: 3 h of speech peaked 266 MiB above 1 min). A fixed
threshold keeps big blocks in mmap (returned to the system when freed) and two arenas bound what
the threads keep: the same 30 min then peaked at the 1-minute figure.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("whisper_api.engine")

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Blocks from this size up are mmapped (glibc's initial threshold, kept fixed).
MMAP_THRESHOLD_BYTES = 128 * 1024
ARENAS = 2


def bound_heap() -> bool:
    """Apply the settings above where glibc is the C library; False elsewhere (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("not glibc: the heap settings are left to the platform")
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(_M_ARENA_MAX, ARENAS))
