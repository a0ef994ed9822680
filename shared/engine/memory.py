"""The worker's C heap: jemalloc where it is installed, else glibc's malloc kept from creeping.

jemalloc first (preloaded: ``shared.engine.process``): CTranslate2 allocates each layer's
attention matrices afresh, 1,500 x 1,500 floats a head and window (864 MB a layer for 16 windows
at ``tiny``), and glibc maps every block above 32 MiB fresh from the kernel and unmaps it when
freed, so every window paid its page faults and the zeroing of that memory: CTranslate2's encoder
spent 42 % of its CPU time in the kernel. jemalloc with ``oversize_threshold:0`` keeps big blocks
in its arenas and hands them out again: 298 -> 167 ms a window at ``tiny`` in int8
(bench/ct2_encoder.py). glibc cannot be told to: its mmap threshold stops at 32 MiB. jemalloc
also bounds a long recording's growth better (bench/engine.py --rss-hours 3: +106 MiB over
1 minute's peak, against +203 MiB on glibc with the settings below).

Where jemalloc is missing, glibc's malloc is kept from creeping (``bound_heap``).

Audio pieces, chunks and mel spectrograms are allocated and freed by the megabyte. glibc's
malloc raises its mmap threshold each time such a block is freed, after which blocks of that size
come from per-thread heaps that are rarely handed back: a worker's RSS then grew with the length
of the recording (measured, bench/engine.py: 3 h of speech peaked 266 MiB above 1 min). A fixed
threshold keeps big blocks in mmap (returned to the system when freed) and two arenas bound what
the threads keep.

The threshold is 32 MiB, not glibc's initial 128 KiB: with 128 KiB every decoding step's logits
and every encoder activation came fresh from the kernel, page faults and zeroing included, and
the engine ran 25-33 % slower (tiny, 300 s: 6.3 s against 5.0 s in float32, 4.1 s against
3.0 s in bfloat16). Measured with 32 MiB (bench/engine.py --rss-hours): 3 h of speech peaks
145-185 MiB above 1 minute, as high as 1.5 h does (a plateau, not a creep).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from pathlib import Path

log = logging.getLogger("whisper_api.engine")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Blocks from this size up are mmapped: glibc's highest dynamic threshold, kept fixed.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: Free memory at the top of a heap beyond this goes back to the system.
TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024
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
    return all(
        mallopt(option, value)
        for option, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
            (_M_ARENA_MAX, ARENAS),
        )
    )


def allocator() -> str:
    """The C allocator this process runs on: "jemalloc" when it is mapped, else "libc"."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "libc"
    return "jemalloc" if "/libjemalloc" in maps else "libc"
