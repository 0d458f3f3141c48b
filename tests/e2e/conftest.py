"""Fixtures for end-to-end tests: a real four-process stack in a private state dir.

Every process, socket and shared-memory segment the stack creates is removed after the test,
also when it fails (``vgpusim down`` semantics through :func:`cleanup_stack`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vgpusim.cli.supervisor import SERVICE_ORDER
from vgpusim.common.paths import StackPaths

pytestmark = pytest.mark.multiprocess


def run_cli(*argv: str, state_dir: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <module> ...`` with the stack's state dir in the environment."""
    env = dict(os.environ, VGPUSIM_STATE_DIR=str(state_dir))
    return subprocess.run(
        [sys.executable, "-m", *argv], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short private state dir (UNIX socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vgs-", dir="/tmp"))
    try:
        yield path
    finally:
        run_cli("vgpusim.cli.launcher", "down", "--state-dir", str(path), state_dir=path, timeout=60)
        paths = StackPaths(path)
        leftovers = [paths.socket(n) for n in SERVICE_ORDER if paths.socket(n).exists()]
        shutil.rmtree(path, ignore_errors=True)
        assert not leftovers, f"sockets left behind: {leftovers}"


@pytest.fixture
def detached_stack(state_dir: Path) -> Path:
    """``vgpusim up --detach`` in ``state_dir``; ``vgpusim down`` afterwards (by ``state_dir``)."""
    done = run_cli(
        "vgpusim.cli.launcher", "up", "--detach", "--state-dir", str(state_dir), state_dir=state_dir
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return state_dir
