"""qemu_frontend's configuration: the common service fields, its peers, guest memory limits.

Loaded by :func:`vgpusim.common.config.load_config` from defaults < ``[qemu_frontend]`` of the
TOML file < ``VGPUSIM_QEMU_FRONTEND_<FIELD>`` < ``--<field>``; validated at start-up.

Glossary:
- peer target: the gRPC address of iommu_type2, vgpu_bus or gfx_host; empty = the peer's UNIX
  socket in the state dir (``unix:<state>/run/<svc>.sock``).
- memory limits: what one VM may have (``max_vm_memory_bytes``) and what all VMs of this frontend
  may have together (``max_total_memory_bytes``); guest RAM lives in ``/dev/shm``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vgpusim.common.config import BaseServiceConfig, option
from vgpusim.common.errors import InvalidArgument
from vgpusim.qemu_frontend.core.memory import GIB, MAX_RAM, MIB

__all__ = ["FrontendConfig"]


def _bad(name: str, problem: str, value: object) -> InvalidArgument:
    """The error of a bad field (``load_config`` adds where the value came from)."""
    return InvalidArgument(
        f"config {name}: {problem}, got {value!r}",
        reason="BAD_CONFIG",
        metadata={"field": name, "value": repr(value)[:200]},
    )


@dataclass(frozen=True, kw_only=True)
class FrontendConfig(BaseServiceConfig):
    """qemu_frontend settings (env ``VGPUSIM_QEMU_FRONTEND_<FIELD>``, flags ``--<field>``)."""

    iommu_target: str = option("", "gRPC target of iommu_type2; empty: its socket in the state dir")
    bus_target: str = option("", "gRPC target of vgpu_bus; empty: its socket in the state dir")
    gfx_target: str = option("", "gRPC target of gfx_host; empty: its socket in the state dir")
    dependency_timeout_s: float = option(
        30.0, "how long start-up waits for iommu_type2, vgpu_bus and gfx_host to be SERVING"
    )
    peer_timeout_s: float = option(10.0, "deadline of each call to a peer service, seconds")
    max_vm_memory_bytes: int = option(4 * GIB, "largest guest RAM of one VM (multiple of 2 MiB)")
    max_total_memory_bytes: int = option(16 * GIB, "guest RAM of all VMs of this frontend together")
    memlock_limit_bytes: int = option(0, "memlock limit of each VM's container; 0 = unlimited")
    prealloc_ram: bool = option(
        False, "reserve guest RAM pages at CreateVm (fails early with RESOURCE_EXHAUSTED, no SIGBUS)"
    )
    irq_queue_size: int = option(1024, "interrupts buffered per WatchInterrupts stream before drops")
    guest_stop_timeout_s: float = option(10.0, "how long StopGuest waits for the vCPU thread to end")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dependency_timeout_s <= 0:
            raise _bad("dependency_timeout_s", "must be > 0", self.dependency_timeout_s)
        if self.peer_timeout_s <= 0:
            raise _bad("peer_timeout_s", "must be > 0", self.peer_timeout_s)
        if not 2 * MIB <= self.max_vm_memory_bytes <= MAX_RAM or self.max_vm_memory_bytes % (2 * MIB):
            raise _bad(
                "max_vm_memory_bytes",
                f"must be a multiple of 2 MiB in 2 MiB..{MAX_RAM // GIB} GiB",
                self.max_vm_memory_bytes,
            )
        if self.max_total_memory_bytes < self.max_vm_memory_bytes:
            raise _bad(
                "max_total_memory_bytes", "must be >= max_vm_memory_bytes", self.max_total_memory_bytes
            )
        if self.memlock_limit_bytes < 0:
            raise _bad("memlock_limit_bytes", "must be >= 0", self.memlock_limit_bytes)
        if not 1 <= self.irq_queue_size <= 1 << 20:
            raise _bad("irq_queue_size", "must be 1..1048576", self.irq_queue_size)
        if self.guest_stop_timeout_s <= 0:
            raise _bad("guest_stop_timeout_s", "must be > 0", self.guest_stop_timeout_s)

    def target_of(self, service: str) -> str:
        """The gRPC target of peer ``service`` (``iommu_type2``, ``vgpu_bus`` or ``gfx_host``)."""
        chosen = {"iommu_type2": self.iommu_target, "vgpu_bus": self.bus_target, "gfx_host": self.gfx_target}
        return chosen[service] or self.paths.target(service)
