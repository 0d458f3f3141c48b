"""The engine's GraphicsMemory over a vGPU's GTT shadow."""

from __future__ import annotations

import asyncio

import pytest

from tests.gfx_host.helpers import MIB, gtt_offset, open_vgpu, pte
from vgpusim.gfx_host.core.engine.memory import DmaFault, GraphicsMemory
from vgpusim.gfx_host.core.gmem import GttGraphicsMemory

LOW = 128 * MIB


def test_translate_gives_views_of_pinned_pages() -> None:
    vgpu, _, memory = open_vgpu()
    for i, gfn in enumerate((4, 5, 9)):
        vgpu.mmio_write(gtt_offset(LOW + i * 4096), 8, pte(gfn))
    asyncio.run(vgpu.gtt.apply_pending())
    gm = GttGraphicsMemory(vgpu.gtt, memory, vgpu.partition)
    assert isinstance(gm, GraphicsMemory)
    assert gm.partition.contains(LOW, 4096) and gm.partition.contains(vgpu.partition.high_gm.start, 1)
    views = gm.translate(LOW + 10, 3 * 4096 - 20, write=True)
    assert [len(v) for v in views] == [2 * 4096 - 10, 4096 - 10]
    views[1][:3] = b"abc"
    assert memory.segments["ram"][9 * 4096 : 9 * 4096 + 3] == b"abc"
    assert gm.translate(LOW, 0, write=False) == []


@pytest.mark.parametrize(("gm_addr", "size"), [(LOW + 3 * 4096, 8), (LOW - 4096, 8), (0, 0)])
def test_faults_become_dma_faults(gm_addr: int, size: int) -> None:
    vgpu, _, memory = open_vgpu()
    gm = GttGraphicsMemory(vgpu.gtt, memory, vgpu.partition)
    with pytest.raises(DmaFault) as exc:
        gm.translate(gm_addr, size, write=True)
    assert exc.value.gm_addr == gm_addr and exc.value.errno == 14
