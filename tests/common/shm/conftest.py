"""Fixtures for the shared-memory tests: a private segment directory, fd counting, child processes.

Children are fresh interpreters (``python -c``, the equivalent of multiprocessing's spawn) that
import ``vgpusim.common.shm`` and talk to the test through a UNIX socket, as a real peer does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHILD_TIMEOUT = 30.0
_PRELUDE = "import os, sys, socket, struct, time\nfrom vgpusim.common.shm import *\n"


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A fresh directory under /dev/shm (else the system temp dir), removed even on failure."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="vgpusim-test-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def open_fds() -> Callable[[], int]:
    """``open_fds()``: how many descriptors this process has open now."""
    return _open_fds


@pytest.fixture
def listener(shm_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A listening AF_UNIX stream socket (the broker side) and its path."""
    path = str(shm_dir / "broker.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(path)
        sock.listen(4)
        sock.settimeout(CHILD_TIMEOUT)
        yield sock, path


class Children:
    """Starts ``python -c`` children; every child is reaped at the end (killed if still running)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, code: str, *args: str) -> subprocess.Popen[bytes]:
        src = _PRELUDE + textwrap.dedent(code)
        proc = subprocess.Popen(
            [sys.executable, "-c", src, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def finish(proc: subprocess.Popen[bytes]) -> str:
        """Wait for ``proc`` (bounded), assert it succeeded, return its stdout."""
        out, err = proc.communicate(timeout=CHILD_TIMEOUT)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    def reap(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=CHILD_TIMEOUT)


@pytest.fixture
def children() -> Iterator[Children]:
    """Child interpreters importing ``vgpusim.common.shm`` (see :class:`Children`)."""
    kids = Children()
    try:
        yield kids
    finally:
        kids.reap()
