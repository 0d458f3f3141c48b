"""Translation between the iommu_type2 protos (``vgpusim.gen.iommu_type2.v1``) and the core's records.

Pure functions, no I/O: the servicer calls them on the way in (proto -> arguments of the core)
and on the way out (frozen records -> proto). The rules that are not one-to-one:

- enum zero values are refused: ``IOMMU_MODE_UNSPECIFIED`` is the core's ``BAD_MODE``,
  ``EXTENSION_UNSPECIFIED`` is ``BAD_EXTENSION`` (other unknown extensions are answered "no", as
  ``VFIO_CHECK_EXTENSION`` does);
- ``Prot`` becomes one of the core's four shared ``Prot`` constants (no allocation per call);
- an ``UnmapDmaRequest`` must set its ``target`` oneof (``NO_UNMAP_TARGET``); an empty dirty
  bitmap on the wire means "none asked";
- a ``WatchUnmap`` stream must open with ``register`` (``REGISTER_FIRST``) and then carry only
  acks (``ALREADY_REGISTERED`` for a second registration, ``EMPTY_MESSAGE`` for neither).

The two hot paths (``PinPages`` runs, ``MapDmaBatch`` entries) convert with one comprehension
each, one step per run or mapping, never per page.

Glossary:
- record: a frozen dataclass of ``vgpusim.iommu_type2.core.model``.
- wire mode: ``pb.IommuMode`` value; core mode: :class:`~vgpusim.iommu_type2.core.IommuMode`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from vgpusim.common.errors import InvalidArgument
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as pb
from vgpusim.iommu_type2.core import (
    PROT_NONE,
    PROT_READ,
    PROT_RW,
    PROT_WRITE,
    ContainerInfo,
    ContainerStatistics,
    DmaMapping,
    FaultLog,
    HostRun,
    IommuInfo,
    IommuMode,
    Prot,
    parse_mode,
)

__all__ = [
    "container_out",
    "extension_in",
    "faults_out",
    "info_out",
    "mapping_in",
    "mappings_in",
    "mode_in",
    "mode_out",
    "prot_in",
    "registration_in",
    "runs_out",
    "statistics_out",
    "unmap_target_in",
    "watch_message_in",
]

_PROTS: Mapping[tuple[bool, bool], Prot] = {
    (False, False): PROT_NONE,
    (True, False): PROT_READ,
    (False, True): PROT_WRITE,
    (True, True): PROT_RW,
}
_MODES: Mapping[IommuMode, pb.IommuMode.ValueType] = {
    IommuMode.EMULATED: pb.IOMMU_MODE_EMULATED,
    IommuMode.HARDWARE: pb.IOMMU_MODE_HARDWARE,
}


def mode_in(value: int) -> IommuMode:
    """The core mode of a wire mode; ``BAD_MODE`` for ``IOMMU_MODE_UNSPECIFIED`` or unknown values."""
    return parse_mode(value)


def mode_out(mode: IommuMode) -> pb.IommuMode.ValueType:
    return _MODES[mode]


def extension_in(value: int) -> int:
    """The extension number to ask the core about; ``BAD_EXTENSION`` for ``EXTENSION_UNSPECIFIED``."""
    if value == pb.EXTENSION_UNSPECIFIED:
        raise InvalidArgument("extension must be specified", reason="BAD_EXTENSION")
    return value


def prot_in(prot: pb.Prot) -> Prot:
    return _PROTS[prot.read, prot.write]


def mapping_in(m: pb.DmaMapping) -> DmaMapping:
    prot = m.prot
    return DmaMapping(m.iova, m.size, m.segment, m.offset, _PROTS[prot.read, prot.write])


def mappings_in(items: Iterable[pb.DmaMapping]) -> list[DmaMapping]:
    """Every entry of a ``MapDmaBatch``, in order: one record per mapping, each field read once
    (reading a sub-message builds a wrapper object, so ``prot`` is read once per entry)."""
    prots, make = _PROTS, DmaMapping
    return [make(m.iova, m.size, m.segment, m.offset, prots[(p := m.prot).read, p.write]) for m in items]


def runs_out(runs: Sequence[HostRun]) -> list[pb.HostRun]:
    """Host runs on the wire (already coalesced by the core: one message per run, not per page)."""
    make = pb.HostRun
    return [make(iova=r.iova, segment=r.segment, offset=r.offset, length=r.length) for r in runs]


def unmap_target_in(request: pb.UnmapDmaRequest) -> tuple[int, int, bool]:
    """``(iova, size, unmap_all)`` of an unmap; ``NO_UNMAP_TARGET`` if the oneof is not set."""
    target = request.WhichOneof("target")
    if target == "range":
        return request.range.iova, request.range.size, False
    if target == "all":
        return 0, 0, True
    raise InvalidArgument("UnmapDma needs a target: range or all", reason="NO_UNMAP_TARGET")


def registration_in(message: pb.WatchUnmapRequest) -> tuple[str, str]:
    """``(container_id, device)`` of a stream's first message; ``REGISTER_FIRST`` otherwise."""
    if message.WhichOneof("kind") != "register":
        raise InvalidArgument("the first WatchUnmap message must be `register`", reason="REGISTER_FIRST")
    return message.register.container_id, message.register.device


def watch_message_in(message: pb.WatchUnmapRequest) -> int:
    """The acknowledged sequence of a later stream message (``ALREADY_REGISTERED``/``EMPTY_MESSAGE``)."""
    kind = message.WhichOneof("kind")
    if kind == "ack":
        return message.ack.sequence
    if kind == "register":
        raise InvalidArgument("this WatchUnmap stream is registered already", reason="ALREADY_REGISTERED")
    raise InvalidArgument("a WatchUnmap message must be `register` or `ack`", reason="EMPTY_MESSAGE")


def statistics_out(s: ContainerStatistics) -> pb.ContainerStatistics:
    return pb.ContainerStatistics(
        mappings=s.mappings,
        mapped_bytes=s.mapped_bytes,
        pinned_pages=s.pinned_pages,
        memlock_bytes=s.memlock_bytes,
        maps_total=s.maps_total,
        unmaps_total=s.unmaps_total,
        pins_total=s.pins_total,
        notifications_total=s.notifications_total,
        faults_total=s.faults_total,
        dirty_pages_reported_total=s.dirty_pages_reported_total,
    )


def container_out(info: ContainerInfo) -> pb.Container:
    return pb.Container(
        container_id=info.container_id,
        owner=info.owner,
        mode=_MODES[info.mode],
        devices=info.devices,
        segments=info.segments,
        statistics=statistics_out(info.statistics),
    )


def info_out(info: IommuInfo) -> pb.GetInfoResponse:
    return pb.GetInfoResponse(
        iova_pgsizes=info.iova_pgsizes,
        dma_avail=info.dma_avail,
        migration_pgsize_bitmap=info.migration_pgsize_bitmap,
        max_dirty_bitmap_size=info.max_dirty_bitmap_size,
        mode=_MODES[info.mode],
    )


def faults_out(log: FaultLog) -> pb.ListFaultsResponse:
    faults = [
        pb.DmaFault(iova=f.iova, size=f.size, write=f.write, device=f.device, reason=f.reason)
        for f in log.faults
    ]
    return pb.ListFaultsResponse(faults=faults, faults_total=log.faults_total)
