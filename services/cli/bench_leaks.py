"""Resource accounting of the stack's processes, for the scale figure's leak check.

:func:`sample` reads, for every service process, its resident memory (``VmRSS``), open file
descriptors (entries of ``/proc/<pid>/fd``) and threads (``Threads``), plus the number of
shared-memory segments (files in the stack's shm dir).  :func:`compare` turns two samples into
the list of leaks: any growth of descriptors or segments, more than :data:`THREAD_SLACK` new
threads per process (thread pools such as asyncio's default executor start their workers lazily,
up to a fixed size; a thread leaked per cycle exceeds it within a few cycles), and RSS growth
beyond :data:`RSS_SLACK_KIB` per process (what CPython's allocator keeps after a burst of work:
freed arenas are not always returned; a real leak of a few hundred bytes per cycle exceeds it
within a few thousand cycles).

Glossary:
- sample: a :class:`Resources` per service plus the segment count, at one instant.
- growth: final sample minus the sample taken after the warm-up cycles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RSS_SLACK_KIB",
    "THREAD_SLACK",
    "Resources",
    "Sample",
    "compare",
    "count_segments",
    "read_resources",
    "sample",
]

RSS_SLACK_KIB = 4096
THREAD_SLACK = 4


@dataclass(frozen=True, slots=True)
class Resources:
    """What one process holds."""

    rss_kib: int
    fds: int
    threads: int


@dataclass(frozen=True, slots=True)
class Sample:
    """Every service's resources and the stack's segments at one instant."""

    processes: dict[str, Resources]
    segments: int

    def describe(self) -> str:
        """One line: ``svc rss/fds/threads ..., segments N``."""
        parts = [
            f"{name} {r.rss_kib // 1024} MiB/{r.fds} fds/{r.threads} threads"
            for name, r in self.processes.items()
        ]
        return ", ".join([*parts, f"{self.segments} segments"])


def read_resources(pid: int) -> Resources:
    """RSS, descriptors and threads of process ``pid`` (Linux ``/proc``).

    Errors: ProcessLookupError if the process is gone.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        raise ProcessLookupError(f"process {pid} is gone") from None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields.get("VmRSS", "0 kB").split()[0])
    threads = int(fields.get("Threads", "0").strip())
    return Resources(rss_kib=rss, fds=fds, threads=threads)


def count_segments(shm_dir: Path) -> int:
    """Files in the stack's shared-memory directory (0 if it does not exist)."""
    try:
        return sum(1 for entry in os.scandir(shm_dir) if entry.is_file(follow_symlinks=False))
    except FileNotFoundError:
        return 0


def sample(pids: dict[str, int], shm_dir: Path) -> Sample:
    """The resources of every process in ``pids`` and the segments in ``shm_dir``."""
    return Sample({name: read_resources(pid) for name, pid in pids.items()}, count_segments(shm_dir))


def compare(before: Sample, after: Sample, *, rss_slack_kib: int = RSS_SLACK_KIB) -> list[str]:
    """The leaks between two samples (empty: none); each names the process, resource and growth."""
    leaks: list[str] = []
    for name, old in before.processes.items():
        new = after.processes.get(name)
        if new is None:
            leaks.append(f"{name}: the process is gone")
            continue
        if new.fds > old.fds:
            leaks.append(f"{name}: +{new.fds - old.fds} file descriptors ({old.fds} -> {new.fds})")
        if new.threads - old.threads > THREAD_SLACK:
            leaks.append(f"{name}: +{new.threads - old.threads} threads ({old.threads} -> {new.threads})")
        if new.rss_kib - old.rss_kib > rss_slack_kib:
            leaks.append(
                f"{name}: RSS +{(new.rss_kib - old.rss_kib) / 1024:.1f} MiB "
                f"({old.rss_kib // 1024} -> {new.rss_kib // 1024} MiB, slack {rss_slack_kib // 1024} MiB)"
            )
    if after.segments > before.segments:
        leaks.append(
            f"shm: +{after.segments - before.segments} segments ({before.segments} -> {after.segments})"
        )
    return leaks
