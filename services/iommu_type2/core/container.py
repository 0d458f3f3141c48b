"""A container: one DMA address space (a VM's), with its segments, devices, mappings and pins.

This is type1's ``vfio_iommu`` with emulated (mdev) groups. Every method validates in the
kernel's order (``checks.py`` for the arguments, then the state checks listed in each
docstring) and either does all of its work or none. Only the unmap family is ``async``: it may
wait for devices (``unmap.py``); everything else completes without yielding, so it is atomic
with respect to other calls on the event loop.

The vendor-facing calls (pins, DMA) are inherited from ``access.py``.

Lifecycle: created by :class:`~.mapper.Mapper`; ``register_segment`` -> ``map_dma`` ->
``attach_device`` -> ``watch_unmap`` -> ``pin_pages``/DMA -> ``unpin_pages`` -> ``unwatch_unmap``
-> ``detach_device`` -> ``unmap_dma`` -> ``unregister_segment``; ``destroy`` does the rest in
that reverse order. After ``destroy`` every call raises ``NotFound`` (``UNKNOWN_CONTAINER``).

Glossary:
- device: an mdev (its UUID) attached here; attached to at most one container of the mapper.
- listener: a device's unmap callback; a device must have one before it may pin.
- dma_avail: ``dma_entry_limit`` minus the current number of mappings.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import MutableMapping, Sequence

from vgpusim.common.errors import TimedOut, VgpusimError, WrongState
from vgpusim.iommu_type2.core import checks, reasons
from vgpusim.iommu_type2.core.access import DeviceCalls
from vgpusim.iommu_type2.core.dirty import DirtyTracker
from vgpusim.iommu_type2.core.dma import DmaAccess, FaultRecorder
from vgpusim.iommu_type2.core.mappings import Mapping, MappingTable
from vgpusim.iommu_type2.core.model import (
    IOVA_PGSIZES,
    MAX_DIRTY_BITMAP_SIZE,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    U64_MAX,
    ContainerInfo,
    ContainerStatistics,
    DmaMapping,
    Extension,
    FaultLog,
    IommuInfo,
    IommuMode,
    MapperConfig,
    UnmapResult,
)
from vgpusim.iommu_type2.core.ops import SegmentStore, UnmapListener
from vgpusim.iommu_type2.core.pins import Memlock, PinTracker
from vgpusim.iommu_type2.core.unmap import Unmapper

log = logging.getLogger(__name__)

_ALWAYS = frozenset({Extension.TYPE1, Extension.TYPE1V2, Extension.UNMAP_ALL})


class Container(DeviceCalls):
    """One DMA address space. Build through :meth:`Mapper.create_container`."""

    def __init__(
        self,
        container_id: str,
        owner: str,
        mode: IommuMode,
        memlock_limit_bytes: int,
        *,
        store: SegmentStore,
        config: MapperConfig,
        attached: MutableMapping[str, str],
    ) -> None:
        self.container_id = container_id
        self.owner = owner
        self.mode = mode
        self._hardware = mode is IommuMode.HARDWARE
        self.config = config
        self._store = store
        self._attached = attached  # device -> container id, shared by the mapper's containers
        self._devices: set[str] = set()
        self._listeners: dict[str, UnmapListener] = {}
        self._views: dict[str, memoryview] = {}
        self._sizes: dict[str, int] = {}
        self._segment_maps: Counter[str] = Counter()
        self._table = MappingTable()
        self._memlock = Memlock(memlock_limit_bytes)
        self._pins = PinTracker(self._table, self._memlock, account=mode is IommuMode.EMULATED)
        self._dirty = DirtyTracker()
        self._faults = FaultRecorder(config.fault_log_size, enabled=mode is IommuMode.HARDWARE)
        self._dma = DmaAccess(self._table, self._views, self._dirty, self._faults)
        self._unmapper = Unmapper(
            self._table,
            self._pins,
            self._listeners,
            retry_limit=config.unmap_retries,
            timeout_s=config.notify_timeout_s,
            check_alive=self._check_alive,
        )
        self._dead = False
        self._maps_total = 0
        self._unmaps_total = 0
        self._unmapped_bytes_total = 0

    def _check_alive(self) -> None:
        if self._dead:
            raise reasons.container_gone(self.container_id)

    # -- segments ---------------------------------------------------------------------------

    def register_segment(self, name: str, size: int) -> None:
        """Make segment ``name`` (its first ``size`` bytes) mappable here.

        Errors, in order: ``BAD_NAME``, ``VALUE_OUT_OF_RANGE``/``ZERO_SIZE``/``MISALIGNED`` (size),
        ``SEGMENT_REGISTERED``, the store's ``NotFound`` (``SEGMENT_MISSING``), ``SEGMENT_TOO_SMALL``.
        """
        self._check_alive()
        checks.check_name("segment", name)
        checks.check_u64("size", size)
        if size == 0:
            raise reasons.zero_size()
        if size & PAGE_MASK:
            raise reasons.misaligned("size", size)
        if name in self._views:
            raise reasons.segment_registered(name)
        view = self._store.view(name).cast("B")
        if len(view) < size:
            raise reasons.segment_too_small(name, size, len(view))
        self._views[name] = view
        self._sizes[name] = size

    def unregister_segment(self, name: str) -> None:
        """Forget segment ``name``. Errors: ``UNKNOWN_SEGMENT`` (NotFound), ``SEGMENT_IN_USE``."""
        self._check_alive()
        if name not in self._views:
            raise reasons.unknown_segment(name)
        if self._segment_maps[name]:
            raise reasons.segment_in_use(name, self._segment_maps[name])
        del self._sizes[name]
        del self._segment_maps[name]
        self._views.pop(name).release()

    # -- devices ----------------------------------------------------------------------------

    def attach_device(self, device: str) -> None:
        """Attach ``device``. Errors: ``BAD_NAME``, ``DEVICE_ATTACHED`` (here or elsewhere)."""
        self._check_alive()
        checks.check_name("device", device)
        if device in self._attached:
            raise reasons.device_attached(device, self._attached[device])
        self._attached[device] = self.container_id
        self._devices.add(device)

    def detach_device(self, device: str) -> int:
        """Detach ``device``: drops its listener and all its pins. Returns the pages it held.

        Errors: ``DEVICE_NOT_ATTACHED`` (NotFound).
        """
        self._check_alive()
        if device not in self._devices:
            raise reasons.device_not_attached(device, self.container_id)
        held = self.unwatch_unmap(device)
        self._devices.discard(device)
        del self._attached[device]
        return held

    def watch_unmap(self, device: str, listener: UnmapListener) -> None:
        """Register ``device``'s unmap callback (required to pin).

        Errors: ``DEVICE_NOT_ATTACHED`` (NotFound), ``ALREADY_WATCHING``.
        """
        self._check_alive()
        if device not in self._devices:
            raise reasons.device_not_attached(device, self.container_id)
        if device in self._listeners:
            raise reasons.already_watching(device)
        self._listeners[device] = listener

    def unwatch_unmap(self, device: str) -> int:
        """Unregister ``device``'s callback (a no-op if none). A device that can no longer be
        notified may not hold pins: they are dropped. Returns the pages it held."""
        self._listeners.pop(device, None)
        return self._pins.drop_device(device)

    # -- VFIO container ioctls --------------------------------------------------------------

    def get_info(self) -> IommuInfo:
        """``VFIO_IOMMU_GET_INFO``: page sizes, ``dma_avail``, migration capability."""
        self._check_alive()
        return IommuInfo(
            iova_pgsizes=IOVA_PGSIZES,
            dma_avail=self.config.dma_entry_limit - len(self._table),
            migration_pgsize_bitmap=PAGE_SIZE,
            max_dirty_bitmap_size=MAX_DIRTY_BITMAP_SIZE,
            mode=self.mode,
        )

    def check_extension(self, extension: int) -> bool:
        """``VFIO_CHECK_EXTENSION``: TYPE1, TYPE1v2, UNMAP_ALL yes; UPDATE_VADDR only with no
        device attached; everything else (DMA_CC, SPAPR, NOIOMMU, unknown values) no."""
        self._check_alive()
        if extension == Extension.UPDATE_VADDR:
            return not self._devices
        return extension in _ALWAYS

    def map_dma(self, request: DmaMapping) -> None:
        """``VFIO_IOMMU_MAP_DMA``. Errors, in order: the argument checks of
        :func:`~.checks.check_map`, ``OVERLAP`` (EEXIST), ``DMA_ENTRY_LIMIT`` (ENOSPC),
        ``MEMLOCK_EXCEEDED`` (ENOMEM, hardware mode: the whole mapping is charged now)."""
        self._check_alive()
        self._map_one(request)
        self._maps_total += 1

    def map_dma_batch(self, requests: Sequence[DmaMapping]) -> int:
        """Map all of ``requests`` in order, or none: on the first failure the mappings made by
        this call are removed and the error is raised with ``metadata["index"]`` set to the
        failing entry's index. Returns the number of mappings made."""
        self._check_alive()
        made: list[Mapping] = []
        for index, request in enumerate(requests):
            try:
                made.append(self._map_one(request))
            except VgpusimError as error:
                for mapping in reversed(made):
                    self._table.remove(mapping)
                    self._forget_mapping(mapping)
                error.metadata["index"] = str(index)
                raise
        self._maps_total += len(made)
        return len(made)

    def _map_one(self, request: DmaMapping) -> Mapping:
        if not checks.map_ok(request, self._sizes):
            checks.check_map(request, self._sizes)  # raises the kernel's first error
        index, existing = self._table.locate(request.iova, request.iova + request.size)
        if existing is not None:
            raise reasons.overlap(request.iova, request.size, existing.iova, existing.size)
        if len(self._table) >= self.config.dma_entry_limit:
            raise reasons.dma_entry_limit(self.config.dma_entry_limit)
        if self._hardware:
            self._memlock.charge(request.size >> PAGE_SHIFT)
        mapping = Mapping(request.iova, request.size, request.segment, request.offset, request.prot)
        self._table.insert(mapping, index)
        self._segment_maps[request.segment] += 1
        if self._dirty.enabled:
            self._dirty.attach(mapping)
        return mapping

    def _forget_mapping(self, mapping: Mapping) -> None:
        """Bookkeeping of a mapping just taken out of the table (it holds no pins)."""
        self._segment_maps[mapping.segment] -= 1
        if self._hardware:
            self._memlock.uncharge(mapping.npages)
        mapping.dirty = None

    async def unmap_dma(
        self, iova: int = 0, size: int = 0, *, unmap_all: bool = False, dirty_pgsize: int = 0
    ) -> UnmapResult:
        """``VFIO_IOMMU_UNMAP_DMA`` of ``[iova, iova + size)`` or, with ``unmap_all``, everything.

        Errors, in order: the argument checks of :func:`~.checks.check_unmap`;
        ``DIRTY_TRACKING_OFF``/``BAD_PGSIZE`` when ``dirty_pgsize`` asks for the range's bitmap;
        ``BISECT``; then, while devices are notified (``unmap.py``): ``UNMAP_NOTIFY_TIMEOUT``,
        ``UNMAP_PINS_OUTSTANDING``. Returns the bytes unmapped (0 if the range holds no
        mapping) and the bitmap. Nothing is unmapped on error.
        """
        self._check_alive()
        checks.check_unmap(iova, size, unmap_all, dirty_pgsize)
        if dirty_pgsize:
            if not self._dirty.enabled:
                raise reasons.dirty_tracking_off()
            if dirty_pgsize != PAGE_SIZE:
                raise reasons.bad_pgsize(dirty_pgsize)
        end = U64_MAX + 1 if unmap_all else iova + size
        marked: set[Mapping] = set()
        try:
            inside = await self._unmapper.settle(iova, end, whole_cover=not unmap_all, marked=marked)
            bitmap = None
            if dirty_pgsize:
                bitmap = self._dirty.report(inside, iova, size >> PAGE_SHIFT, repopulate=False)
            removed = self._table.remove_within(iova, end)
            unmapped = 0
            for mapping in removed:
                self._forget_mapping(mapping)
                unmapped += mapping.size
            self._unmaps_total += len(removed)
            self._unmapped_bytes_total += unmapped
            return UnmapResult(unmapped, bitmap)
        finally:
            self._unmapper.unmark(marked)

    async def unmap_all(self) -> UnmapResult:
        """``UNMAP_DMA`` with ``VFIO_DMA_UNMAP_FLAG_ALL``."""
        return await self.unmap_dma(unmap_all=True)

    # -- dirty tracking ---------------------------------------------------------------------

    def set_dirty_tracking(self, enabled: bool) -> None:
        """``VFIO_IOMMU_DIRTY_PAGES`` START (``True``) or STOP; each is a no-op if already so."""
        self._check_alive()
        if enabled:
            self._dirty.start(self._table)
        else:
            self._dirty.stop(self._table)

    def get_dirty_bitmap(self, iova: int, size: int, pgsize: int) -> bytes:
        """``GET_BITMAP`` of ``[iova, iova + size)``: bit *i* = page ``iova + i * pgsize``.

        Errors, in order: the argument checks of :func:`~.checks.check_dirty_range`,
        ``DIRTY_TRACKING_OFF``, ``BISECT``. Still-pinned pages are dirty again next round.
        """
        self._check_alive()
        npages = checks.check_dirty_range(iova, size, pgsize)
        if not self._dirty.enabled:
            raise reasons.dirty_tracking_off()
        self._table.check_whole_cover(iova, iova + size)
        return self._dirty.report(self._table.within(iova, iova + size), iova, npages, repopulate=True)

    # -- observation ------------------------------------------------------------------------

    def faults(self) -> FaultLog:
        """The recorded DMA faults (hardware mode; always empty in emulated mode)."""
        self._check_alive()
        return self._faults.snapshot()

    def mappings(self) -> tuple[DmaMapping, ...]:
        """Every mapping, in IOVA order."""
        return tuple(mapping.describe() for mapping in self._table)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(sorted(self._devices))

    def info(self) -> ContainerInfo:
        """The container as listed."""
        return ContainerInfo(
            container_id=self.container_id,
            owner=self.owner,
            mode=self.mode,
            memlock_limit_bytes=self._memlock.limit_bytes,
            devices=self.devices,
            segments=tuple(sorted(self._views)),
            dirty_tracking=self._dirty.enabled,
            statistics=self.statistics(),
        )

    def statistics(self) -> ContainerStatistics:
        """A snapshot of the counters (see :class:`~.model.ContainerStatistics`)."""
        return ContainerStatistics(
            mappings=len(self._table),
            mapped_bytes=self._table.mapped_bytes,
            pinned_pages=self._pins.pinned_pages,
            memlock_bytes=self._memlock.used_bytes,
            maps_total=self._maps_total,
            unmaps_total=self._unmaps_total,
            unmapped_bytes_total=self._unmapped_bytes_total,
            pins_total=self._pins.pins_total,
            unpins_total=self._pins.unpins_total,
            notifications_total=self._unmapper.notifications,
            retries_total=self._unmapper.retries,
            faults_total=self._faults.total,
            dirty_pages_reported_total=self._dirty.reported_pages_total,
            dma_read_bytes_total=self._dma.read_bytes,
            dma_write_bytes_total=self._dma.write_bytes,
            translations_total=self._dma.translations,
        )

    # -- teardown ---------------------------------------------------------------------------

    async def destroy(self, *, force: bool = False) -> int:
        """Unmap everything (notifying devices), detach every device, forget the segments.

        Without ``force`` a failed handshake (``UNMAP_NOTIFY_TIMEOUT``,
        ``UNMAP_PINS_OUTSTANDING``) is raised and the container stays as it was. With ``force``
        (the owner is gone) the failure is logged, the stale pins are dropped and everything is
        removed anyway. Returns the bytes unmapped. The caller (the mapper) forgets the
        container.
        """
        self._check_alive()
        try:
            unmapped = (await self.unmap_all()).unmapped_bytes
        except (TimedOut, WrongState) as error:
            if not force:
                raise
            log.warning("container %s destroyed with pins outstanding: %s", self.container_id, error)
            unmapped = 0
        self._check_alive()  # a concurrent destroy finished first
        for mapping in self._table.remove_within(0, U64_MAX + 1):  # only left after a forced failure
            self._pins.drop_mapping(mapping)
            self._forget_mapping(mapping)
            self._unmaps_total += 1
            self._unmapped_bytes_total += mapping.size
            unmapped += mapping.size
        for device in list(self._devices):
            self.detach_device(device)
        for name in list(self._views):
            self.unregister_segment(name)
        self._dead = True
        return unmapped
