"""Fixtures of the sysfs tests: a bus on its own loop thread, and the real FUSE mount of it.

``bus_thread`` needs nothing special; ``mount`` skips the test when FUSE cannot be used here
(no ``/dev/fuse``, not root, no ``fusermount3``, no pyfuse3) and always unmounts afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vgpu_bus.sysfs.harness import BusThread, fuse_available, mounted


@pytest.fixture
def bus_thread(tmp_path: Path) -> Iterator[BusThread]:
    """A bus with parents ``GPU`` (8 units) and ``SMALL_GPU`` (2 units) on a loop thread."""
    bus = BusThread(tmp_path / "state")
    try:
        yield bus
    finally:
        bus.close()


@pytest.fixture
def mount(bus_thread: BusThread, tmp_path: Path) -> Iterator[Path]:
    """The mount root (``sys/``, ``etc/mdevctl.d``) of ``bus_thread``, served by ``SysfsServer``."""
    reason = fuse_available()
    if reason is not None:
        pytest.skip(reason)
    with mounted(bus_thread, tmp_path / "root") as root:
        yield root
