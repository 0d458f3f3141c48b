"""The unmap handshake: notify devices until no pins remain in the range, bounded by retries.

This is the ``goto again`` loop of type1's ``vfio_dma_do_unmap`` with ``vfio_notify_dma_unmap``
(kernel-mdev §2.3, §2.5), made asynchronous. One round:

1. re-check the range (whole cover, unless unmap-all) and mark every mapping in it as being
   unmapped (``Mapping.unmapping``): from now on new pins there fail with ``UNMAP_IN_PROGRESS``
   (iommufd's ``prevent_access``; type1 has no such guard because it holds its lock);
2. if no mapping in the range holds pins, stop: the caller removes the mappings right away,
   with no ``await`` in between, so no pin can slip in;
3. otherwise call ``notify_unmap(iova, size)`` of **every** registered device of the container
   (as type1 walks its whole ``device_list``), **concurrently** (one task each in a
   ``TaskGroup``, each under ``asyncio.timeout(notify_timeout_s)``), and wait for all of them.
   ``iova, size`` span the pinned mappings of the range (one call per device per round, where
   type1 makes one per pinned ``vfio_dma``). A device that does not answer in time fails the
   unmap with ``UNMAP_NOTIFY_TIMEOUT`` naming it; an exception from a device is logged and
   treated like a return;
4. go to 1. If the lowest pinned mapping is the same as in the previous round, that counts as
   a retry (type1's ``dma_last``/``retries``); after ``unmap_retries`` (10) retries the unmap
   fails with ``UNMAP_PINS_OUTSTANDING`` naming each device and the pages it kept, where type1
   would ``BUG_ON``.

Nothing is unmapped when the handshake fails (type1 would already have removed the unpinned
mappings below the failing one). The marks are always removed on the way out.

Glossary:
- round: one notification of all devices plus the re-check after it.
- holder: a device with references on pages of the range.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from collections.abc import Mapping as MappingABC

from vgpusim.iommu_type2.core import reasons
from vgpusim.iommu_type2.core.mappings import Mapping, MappingTable
from vgpusim.iommu_type2.core.ops import UnmapListener
from vgpusim.iommu_type2.core.pins import PinTracker

log = logging.getLogger(__name__)


class Unmapper:
    """The handshake of one container; counts notifications and retries."""

    __slots__ = (
        "check_alive",
        "listeners",
        "notifications",
        "pins",
        "retries",
        "retry_limit",
        "table",
        "timeout_s",
    )

    def __init__(
        self,
        table: MappingTable,
        pins: PinTracker,
        listeners: MappingABC[str, UnmapListener],
        *,
        retry_limit: int,
        timeout_s: float,
        check_alive: Callable[[], None],
    ) -> None:
        self.table = table
        self.pins = pins
        self.listeners = listeners
        self.retry_limit = retry_limit
        self.timeout_s = timeout_s
        self.check_alive = check_alive
        self.notifications = 0
        self.retries = 0

    async def settle(self, iova: int, end: int, *, whole_cover: bool, marked: set[Mapping]) -> list[Mapping]:
        """Run rounds until no mapping in ``[iova, end)`` holds pins; returns those mappings.

        ``marked`` collects the mappings this call marked; the caller unmarks them (``unmark``)
        in a ``finally`` after removing what it unmaps. Raises ``BISECT``, ``UNMAP_NOTIFY_TIMEOUT``,
        ``UNMAP_PINS_OUTSTANDING`` or the container's "gone" error (destroyed meanwhile).
        """
        last: Mapping | None = None
        retries = 0
        rounds = 0
        while True:
            self.check_alive()
            if whole_cover:
                self.table.check_whole_cover(iova, end)
            inside = self.table.within(iova, end)
            for mapping in inside:
                if mapping not in marked:
                    mapping.unmapping += 1
                    marked.add(mapping)
            pinned = [m for m in inside if m.pins]
            if not pinned:
                return inside
            if pinned[0] is last:
                retries += 1
                if retries > self.retry_limit:
                    raise reasons.pins_outstanding(iova, end - iova, rounds, self._holders(pinned))
            else:
                last, retries = pinned[0], 0
            if rounds:
                self.retries += 1
            rounds += 1
            await self._notify(pinned[0].iova, pinned[-1].end - pinned[0].iova)

    @staticmethod
    def unmark(marked: set[Mapping]) -> None:
        for mapping in marked:
            mapping.unmapping -= 1
        marked.clear()

    def _holders(self, pinned: list[Mapping]) -> dict[str, list[tuple[int, int]]]:
        start, end = pinned[0].iova, pinned[-1].end
        devices = {device for mapping in pinned for device in mapping.holders}
        return {device: self.pins.device_runs(device, start, end) for device in devices}

    async def _notify(self, iova: int, size: int) -> None:
        """One round: every registered device, concurrently, each under the deadline."""
        listeners = list(self.listeners.items())
        timed_out: list[str] = []

        async def one(device: str, listener: UnmapListener) -> None:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await listener.notify_unmap(iova, size)
            except TimeoutError:
                timed_out.append(device)
            except Exception:
                log.warning(
                    "device %s failed its unmap notification of %#x+%#x", device, iova, size, exc_info=True
                )

        async with asyncio.TaskGroup() as group:
            for device, listener in listeners:
                group.create_task(one(device, listener))
        self.notifications += len(listeners)
        if timed_out:
            raise reasons.notify_timeout(timed_out, iova, size, self.timeout_s)
