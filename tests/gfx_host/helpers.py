"""Shared builders for the gfx_host core tests: shipped models, an open vGPU, GTT entries."""

from __future__ import annotations

from vgpusim.gfx_host.core.fakes import FakeHostMemory, FakePinner
from vgpusim.gfx_host.core.gpu import PhysicalGpu
from vgpusim.gfx_host.core.gtt import GTT_PRESENT, PAGE_SHIFT
from vgpusim.gfx_host.core.models import GpuModel, load_model
from vgpusim.gfx_host.core.registers import GTT_OFFSET, PV_MAGIC_LO
from vgpusim.gfx_host.core.vgpu import Vgpu

GVT = load_model("gvtg-skl")
NV = load_model("nvidia-a10")
PARENT = "0000:00:02.0"
U1 = "6f5c1f5e-3c1b-4b8e-9a53-1b1d6c0a7e01"
U2 = "6f5c1f5e-3c1b-4b8e-9a53-1b1d6c0a7e02"
MIB = 1 << 20


def pte(gfn: int, *, present: bool = True) -> int:
    """A GTT entry mapping guest frame ``gfn``."""
    return gfn << PAGE_SHIFT | (GTT_PRESENT if present else 0)


def gtt_offset(gm_addr: int) -> int:
    """BAR0 offset of the GTT entry of the graphics page at ``gm_addr``."""
    return GTT_OFFSET + (gm_addr >> PAGE_SHIFT) * 8


def make_vgpu(model: GpuModel = GVT, type_id: str = "GVTg_V5_4", uuid: str = U1) -> Vgpu:
    """A created (not open) vGPU on a fresh GPU."""
    return PhysicalGpu(PARENT, model).create_vgpu(uuid, type_id)


def open_vgpu(
    model: GpuModel = GVT, type_id: str = "GVTg_V5_4", *, notify: bool = True
) -> tuple[Vgpu, FakePinner, FakeHostMemory]:
    """An open vGPU with a fake pinner over 16 MiB of guest RAM; ``notify`` reads the PVINFO magic."""
    vgpu = make_vgpu(model, type_id)
    memory = FakeHostMemory()
    pinner = FakePinner(memory)
    vgpu.open("container-1", pinner, memory)
    if notify:
        vgpu.mmio_read(PV_MAGIC_LO, 4)
    return vgpu, pinner, memory
