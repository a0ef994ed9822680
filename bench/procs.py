"""Process measurements shared by the benchmarks and the edge tests."""

from __future__ import annotations

from pathlib import Path


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and its direct children (a gunicorn master and workers)."""
    pids = [str(pid), *Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total = 0
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total
