"""Physical GPUs (mdev parents) and the host: type catalogue, create/remove of vGPUs.

:class:`PhysicalGpu` is what ``VendorService`` works on for one parent: ``types()`` (the catalogue
with live ``available_instances``), ``create_vgpu`` (partition + device model, errors of
``resources`` passed through unchanged, as the kernel does for vendor errors), ``remove_vgpu``
(Busy while open) and lookups.  :class:`GfxHost` holds the GPUs of a :class:`HostConfig`.

Glossary:
- parent: the physical GPU, named by its PCI address (``0000:00:02.0``).
- type-id: ``<driver>-<type name>``, e.g. ``i915-GVTg_V5_4``; ``device_api`` is ``vfio-pci``.
"""

from __future__ import annotations

import uuid as _uuid
from dataclasses import dataclass

from vgpusim.common.errors import AlreadyExists, InvalidArgument, NotFound
from vgpusim.gfx_host.core.host_config import HostConfig
from vgpusim.gfx_host.core.models import GpuModel
from vgpusim.gfx_host.core.resources import GpuResources, ResourceStatistics
from vgpusim.gfx_host.core.vgpu import Vgpu, VgpuState

DEVICE_API = "vfio-pci"


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """One entry of a parent's ``mdev_supported_types``."""

    type_id: str
    name: str
    description: str
    device_api: str
    available_instances: int


@dataclass(frozen=True, slots=True)
class GpuStatistics:
    """A snapshot of one physical GPU."""

    parent: str
    model: str
    vgpus: int
    resources: ResourceStatistics


def canonical_uuid(value: str) -> str:
    """The lower-case 8-4-4-4-12 form of ``value``; InvalidArgument (UUID_INVALID) otherwise."""
    try:
        if len(value) != 36:
            raise ValueError(value)
        return str(_uuid.UUID(value))
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"malformed UUID {value!r}", reason="UUID_INVALID") from exc


class PhysicalGpu:
    """One parent GPU: its model, its resources and its vGPUs."""

    def __init__(self, parent: str, model: GpuModel) -> None:
        self.parent = parent
        self.model = model
        self.resources = GpuResources(model, parent=parent)
        self._vgpus: dict[str, Vgpu] = {}

    def types(self) -> tuple[TypeInfo, ...]:
        """The type catalogue with live ``available_instances``."""
        return tuple(
            TypeInfo(
                type_id=t.type_id,
                name=t.pretty_name,
                description=t.description,
                device_api=DEVICE_API,
                available_instances=self.resources.available_instances(t),
            )
            for t in self.model.types
        )

    def available_instances(self, type_id: str) -> int:
        """``available_instances`` of one type (NotFound TYPE_NOT_FOUND if unknown)."""
        return self.resources.available_instances(self.model.find_type(type_id))

    def create_vgpu(self, uuid: str, type_id: str) -> Vgpu:
        """Reserve a partition and build the vGPU; Exhausted (reason names the resource) if no fit."""
        uuid = canonical_uuid(uuid)
        vgpu_type = self.model.find_type(type_id)
        if uuid in self._vgpus:
            raise AlreadyExists(
                f"vGPU {uuid} exists on {self.parent}", reason="UUID_IN_USE", metadata={"uuid": uuid}
            )
        partition = self.resources.allocate(vgpu_type)
        try:
            vgpu = Vgpu(uuid, self.parent, self.model, vgpu_type, partition)
        except BaseException:
            self.resources.free(partition)
            raise
        self._vgpus[uuid] = vgpu
        return vgpu

    def get_vgpu(self, uuid: str) -> Vgpu:
        """The vGPU ``uuid``; NotFound (DEVICE_NOT_FOUND) if this parent has none."""
        vgpu = self._vgpus.get(canonical_uuid(uuid))
        if vgpu is None:
            raise NotFound(
                f"no vGPU {uuid} on {self.parent}", reason="DEVICE_NOT_FOUND", metadata={"uuid": uuid}
            )
        return vgpu

    def vgpus(self) -> tuple[Vgpu, ...]:
        """Live vGPUs, by vGPU ID."""
        return tuple(sorted(self._vgpus.values(), key=lambda v: v.vgpu_id))

    def remove_vgpu(self, uuid: str) -> None:
        """Destroy the vGPU and return its partition; Busy (DEVICE_OPEN) while it is open."""
        vgpu = self.get_vgpu(uuid)
        vgpu.destroy()
        del self._vgpus[vgpu.uuid]
        self.resources.free(vgpu.partition)

    def open_vgpus(self) -> tuple[Vgpu, ...]:
        """The vGPUs currently open."""
        return tuple(v for v in self.vgpus() if v.state is VgpuState.OPEN)

    def statistics(self) -> GpuStatistics:
        """A snapshot of this GPU."""
        return GpuStatistics(self.parent, self.model.name, len(self._vgpus), self.resources.statistics())


class GfxHost:
    """All physical GPUs of this host, from a :class:`HostConfig`, in config order."""

    def __init__(self, config: HostConfig) -> None:
        self.config = config
        self._gpus = {g.parent: PhysicalGpu(g.parent, g.model) for g in config.gpus}

    def gpus(self) -> tuple[PhysicalGpu, ...]:
        """The GPUs in config order."""
        return tuple(self._gpus.values())

    def gpu(self, parent: str) -> PhysicalGpu:
        """The GPU named ``parent``; NotFound (PARENT_NOT_FOUND) otherwise."""
        gpu = self._gpus.get(parent)
        if gpu is None:
            raise NotFound(
                f"no parent {parent!r} on this host", reason="PARENT_NOT_FOUND", metadata={"parent": parent}
            )
        return gpu

    def find_vgpu(self, uuid: str) -> Vgpu:
        """The vGPU ``uuid`` on whichever parent has it; NotFound (DEVICE_NOT_FOUND) otherwise."""
        key = canonical_uuid(uuid)
        for gpu in self._gpus.values():
            vgpu = gpu._vgpus.get(key)
            if vgpu is not None:
                return vgpu
        raise NotFound(f"no vGPU {uuid} on this host", reason="DEVICE_NOT_FOUND", metadata={"uuid": uuid})
