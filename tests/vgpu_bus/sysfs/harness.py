"""A real bus on its own loop thread, mounted with the real FUSE server, for plain file I/O tests.

The tests do blocking file I/O on the mount from the test thread, so the bus cannot run on the
test's event loop (a blocking ``open()`` there would wait for a FUSE handler that waits for that
very loop). :class:`BusThread` runs a :class:`VgpuBus` over a temporary SQLite file, with two
parents on :class:`FakeVendor` pools, in a dedicated asyncio thread; ``call`` runs a coroutine
there and returns its result. :func:`mounted` mounts it with :class:`SysfsServer` and always
unmounts (``fusermount3 -u -z`` as the last resort), checking that no mount is left.

Also runnable, for the crash test: ``python -m tests.vgpu_bus.sysfs.harness <state> <mount>``
serves until killed, after printing ``ready``.

Glossary:
- GPU / SMALL_GPU: the two parents; GPU has 8 units (small type 1, big type 4), SMALL_GPU 2.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from vgpusim.vgpu_bus.core import BusConfig, TypeSpec, VgpuBus
from vgpusim.vgpu_bus.core.fakes import FakeOwners, FakeVendor
from vgpusim.vgpu_bus.sysfs.mounts import fuse_mounts_at

T = TypeVar("T")

GPU = "0000:00:02.0"
SMALL_GPU = "0000:00:03.0"
SMALL = "i915-GVTg_V5_8"
BIG = "i915-GVTg_V5_2"
BIG_DESCRIPTION = "low_gm_size: 256MB\nhigh_gm_size: 1024MB\nweight: 8\n"
TYPES = (TypeSpec(SMALL, "GVTg_V5_8"), TypeSpec(BIG))
CONFIG = BusConfig(release_timeout=0.5, release_request_interval=0.05, autostart_backoff=0.001)
U1 = "11111111-1111-1111-1111-111111111111"
U2 = "22222222-2222-2222-2222-222222222222"
U3 = "33333333-3333-3333-3333-333333333333"


def fuse_available() -> str | None:
    """Why FUSE tests cannot run here, or ``None`` if they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if os.geteuid() != 0:
        return "mounting needs root"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt-get install fuse3)"
    try:
        import pyfuse3  # noqa: F401
        import trio  # noqa: F401
    except ImportError as error:
        return f"the sysfs extra is not installed ({error})"
    return None


def make_vendor(pool: int, *, racy: bool = False) -> FakeVendor:
    """A vendor whose small type costs 1 unit and big type 4 units of ``pool``."""
    return FakeVendor(
        {SMALL: 1, BIG: 4},
        pool=pool,
        exhausted_reason="APERTURE_EXHAUSTED",
        accepted_attrs=frozenset({"weight", "resolution"}),
        descriptions={BIG: BIG_DESCRIPTION},
        racy=racy,
    )


class BusThread:
    """A ``VgpuBus`` (two parents) on an asyncio loop running in its own thread."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-bus-loop", daemon=True)
        self._thread.start()
        self.vendors = {GPU: make_vendor(8, racy=True), SMALL_GPU: make_vendor(2, racy=True)}
        state_dir.mkdir(parents=True, exist_ok=True)
        # The store's SQLite connection belongs to the thread that opens it: the loop's.
        self.bus = self.sync(lambda: VgpuBus.open(state_dir / "bus.sqlite3", FakeOwners(), config=CONFIG))
        for parent, vendor in self.vendors.items():
            self.call(functools.partial(self.bus.register_parent, parent, TYPES, vendor))

    def call(self, work: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
        """Run ``work()`` on the bus loop and return its result."""

        async def run() -> T:
            return await work()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def sync(self, work: Callable[[], T]) -> T:
        """Run the plain function ``work`` on the bus loop (the core is not thread-safe)."""

        async def run() -> T:
            return work()

        return self.call(run)

    def close(self) -> None:
        """Close the bus and stop the loop thread."""
        self.sync(self.bus.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def force_unmount(mountpoint: Path) -> None:
    """Last-resort clean-up: lazily detach every FUSE mount left on ``mountpoint``."""
    for _ in range(4):
        if not fuse_mounts_at(mountpoint):
            return
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False, capture_output=True)


@contextmanager
def mounted(bus: BusThread, mountpoint: Path) -> Iterator[Path]:
    """Serve ``bus`` on ``mountpoint`` for the block; unmounted afterwards, whatever happens."""
    from vgpusim.vgpu_bus.sysfs.server import SysfsServer

    server = SysfsServer(bus.bus, bus.loop, mountpoint, state_dir=bus.state_dir)
    try:
        bus.call(server.start)
        yield mountpoint
    finally:
        try:
            bus.call(server.stop)
        finally:
            force_unmount(mountpoint)
    assert not fuse_mounts_at(mountpoint), f"a mount is left on {mountpoint}"


def main(argv: list[str]) -> int:
    """Serve a fake bus on ``argv[1]`` (state in ``argv[0]``) until killed."""
    state_dir, mountpoint = Path(argv[0]), Path(argv[1])
    bus = BusThread(state_dir)
    from vgpusim.vgpu_bus.sysfs.server import SysfsServer

    server = SysfsServer(bus.bus, bus.loop, mountpoint, state_dir=state_dir)
    bus.call(server.start)
    print("ready", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
