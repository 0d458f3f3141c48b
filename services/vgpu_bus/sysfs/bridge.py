"""From trio to asyncio: run a bus coroutine on the bus's loop and wait for it in a FUSE handler.

pyfuse3 runs its handlers as trio tasks on the filesystem thread; the bus lives on an asyncio
loop in another thread. :meth:`LoopBridge.call` submits the coroutine with
``asyncio.run_coroutine_threadsafe`` and waits for the resulting future without blocking the
trio thread (the future's done-callback wakes the task through the trio token), so many
handlers can wait at once and the core's own locks decide the order, exactly as for gRPC calls.

Errors come back as ``pyfuse3.FUSEError`` with the errno the system call must return:
:class:`~.layout.FsError` and ``VgpusimError`` carry theirs; anything else is a bug, logged
with its traceback and answered ``EIO``. If the trio task is cancelled (unmount), the bus
coroutine is cancelled too.

Glossary:
- bus loop: the asyncio event loop the :class:`~..core.VgpuBus` belongs to.
- trio token: the handle through which another thread schedules a callback on the trio loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import CancelledError, Future
from typing import TypeVar

import pyfuse3
import trio

from vgpusim.common.errors import VgpusimError
from vgpusim.vgpu_bus.sysfs.layout import FsError

log = logging.getLogger(__name__)

T = TypeVar("T")


def errno_of(error: BaseException) -> int:
    """The errno a system call returns for ``error`` (``EIO`` for an unexpected one)."""
    if isinstance(error, FsError | VgpusimError):
        return error.errno
    return errno.EIO


class LoopBridge:
    """Calls into one asyncio loop from trio tasks; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    async def call(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work()`` on the bus loop; its result, or ``FUSEError`` with the right errno."""
        if self.loop.is_closed():
            raise pyfuse3.FUSEError(errno.EIO)

        async def run() -> T:
            return await work()

        future: Future[T] = asyncio.run_coroutine_threadsafe(run(), self.loop)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: Future[T]) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        try:
            return future.result()
        except (FsError, VgpusimError) as error:
            log.debug("answering errno %s: %s", errno.errorcode.get(error.errno, error.errno), error)
            raise pyfuse3.FUSEError(error.errno) from None
        except CancelledError:
            log.warning("a filesystem operation was cancelled on the bus loop")
            raise pyfuse3.FUSEError(errno.EINTR) from None
        except Exception:
            log.exception("unexpected error in a filesystem operation")
            raise pyfuse3.FUSEError(errno.EIO) from None
