"""The mount's lifecycle: a FUSE thread with its own trio loop, serving a bus that lives on asyncio.

:class:`SysfsServer` mounts the tree on ``mountpoint`` and serves it until :meth:`stop`:

1. ``start()`` detaches whatever FUSE mount a crashed predecessor left on ``mountpoint``
   (:func:`~.mounts.unmount_stale`), creates the directory, records the mount point in
   ``<state>/run/sysfs-mount.json``, then starts the filesystem thread, which calls
   ``pyfuse3.init`` (the mount) and ``trio.run(pyfuse3.main)``; it returns once the thread serves;
2. every FUSE request is a trio task calling into the bus loop (:mod:`.bridge`);
3. ``stop()`` asks the trio loop to end (``pyfuse3.terminate``), waits for the thread without
   blocking the bus loop (handlers still waiting on the bus must be able to finish), lets
   ``pyfuse3.close(unmount=True)`` unmount, checks nothing is left (else detaches it), and
   removes the record.

pyfuse3 keeps its session in module globals, so one process serves at most one mount at a time;
a second ``start()`` raises ``RuntimeError``. Nothing that runs on the bus loop may touch the
mount (a blocking ``open()`` there would wait for a handler that waits for the loop).

``vgpusim down`` calls :func:`~.mounts.unmount_recorded` (no pyfuse3 needed there).

Glossary:
- filesystem thread: the thread running ``trio.run``; it owns every pyfuse3 call after ``init``.
- record: ``<state>/run/sysfs-mount.json``, ``{"mountpoint": ..., "pid": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from pathlib import Path
from types import TracebackType

import pyfuse3
import trio

from vgpusim.vgpu_bus.core import VgpuBus
from vgpusim.vgpu_bus.sysfs.bridge import LoopBridge
from vgpusim.vgpu_bus.sysfs.fs import MdevFs
from vgpusim.vgpu_bus.sysfs.mounts import fuse_mounts_at, record_path, unmount_stale
from vgpusim.vgpu_bus.sysfs.tree import Tree

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
"""Seconds ``start()`` waits for the filesystem thread to serve."""
STOP_TIMEOUT = 30.0
"""Seconds ``stop()`` waits for requests in flight (a remove may wait for a device's owner)."""

_active_lock = threading.Lock()
_active: SysfsServer | None = None


class SysfsServer:
    """Serves the mdev tree of ``bus`` (whose loop is ``loop``) on ``mountpoint``."""

    def __init__(
        self,
        bus: VgpuBus,
        loop: asyncio.AbstractEventLoop,
        mountpoint: str | os.PathLike[str],
        *,
        state_dir: str | os.PathLike[str],
        allow_other: bool = False,
    ) -> None:
        self.bus = bus
        self.loop = loop
        self.mountpoint = Path(mountpoint).absolute()
        self.state_dir = Path(state_dir)
        self.allow_other = allow_other
        self.tree = Tree(bus)
        self.fs = MdevFs(self.tree, LoopBridge(loop))
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._serving = threading.Event()
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        """Whether the filesystem thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def options(self) -> set[str]:
        """The FUSE mount options."""
        options = {"default_permissions", "fsname=vgpusim", "subtype=vgpusim"}
        if self.allow_other:
            options.add("allow_other")
        return options

    async def start(self) -> None:
        """Mount and serve (see the module docstring); ``RuntimeError`` if it cannot."""
        global _active
        with _active_lock:
            if _active is not None:
                raise RuntimeError(f"a sysfs mount is already served by this process at {_active.mountpoint}")
            _active = self
        try:
            await asyncio.to_thread(self._prepare)
            self._thread = threading.Thread(target=self._run, name="vgpusim-sysfs", daemon=True)
            self._thread.start()
            await asyncio.to_thread(self._serving.wait, START_TIMEOUT)
            if self._error is not None or not self._serving.is_set():
                raise RuntimeError(f"cannot mount {self.mountpoint}: {self._error or 'timed out'}")
        except BaseException:
            await self.stop()
            raise
        log.info("mdev sysfs mounted on %s", self.mountpoint)

    async def stop(self) -> None:
        """Unmount and end the filesystem thread (idempotent); see the module docstring."""
        global _active
        thread, self._thread = self._thread, None
        try:
            if thread is not None:
                self._terminate()
                await asyncio.to_thread(thread.join, STOP_TIMEOUT)
                if thread.is_alive():
                    log.error("the sysfs thread did not end within %.0f s; detaching the mount", STOP_TIMEOUT)
            await asyncio.to_thread(self._cleanup)
        finally:
            with _active_lock:
                if _active is self:
                    _active = None

    async def __aenter__(self) -> SysfsServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- internals -----------------------------------------------------------------------------

    def _prepare(self) -> None:
        if unmount_stale(self.mountpoint):
            log.warning("detached a stale FUSE mount on %s", self.mountpoint)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self._write_record()  # before mounting: a crash from here on leaves a record for `down`

    def _run(self) -> None:
        try:
            pyfuse3.init(self.fs, str(self.mountpoint), self.options)
        except BaseException as error:
            self._error = error
            self._serving.set()
            return
        try:
            trio.run(self._serve)
        except BaseException:
            log.exception("the sysfs filesystem loop failed")
        finally:
            self._token = None
            try:
                pyfuse3.close(unmount=True)
            except Exception:
                log.exception("pyfuse3.close failed")

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._serving.set()
        await pyfuse3.main()

    def _terminate(self) -> None:
        token = self._token
        if token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(pyfuse3.terminate, trio_token=token)

    def _write_record(self) -> None:
        record = record_path(self.state_dir)
        record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        record.write_text(json.dumps({"mountpoint": str(self.mountpoint), "pid": os.getpid()}) + "\n")

    def _cleanup(self) -> None:
        if fuse_mounts_at(self.mountpoint):
            unmount_stale(self.mountpoint)
        record_path(self.state_dir).unlink(missing_ok=True)
