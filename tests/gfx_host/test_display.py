"""QueryGfxPlane / GetGfxDmabuf: zeroed disabled plane, ids from 1 reused while unchanged,
flags handling, invalid planes, and the framebuffer fetched through the GTT shadow."""

from __future__ import annotations

import asyncio
import errno

import pytest

from tests.gfx_host.helpers import MIB, gtt_offset, open_vgpu, pte
from vgpusim.common.errors import InvalidArgument, NotFound
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.display import (
    DRM_FORMAT_RGB565,
    DRM_FORMAT_XRGB8888,
    DRM_PLANE_TYPE_CURSOR,
    DRM_PLANE_TYPE_PRIMARY,
    GFX_PLANE_TYPE_DMABUF,
    GFX_PLANE_TYPE_PROBE,
    GFX_PLANE_TYPE_REGION,
    NO_HOTSPOT,
    PlaneInfo,
    fourcc,
)
from vgpusim.gfx_host.core.vgpu import Vgpu

LOW = 128 * MIB
DMABUF = GFX_PLANE_TYPE_DMABUF
PRIMARY = DRM_PLANE_TYPE_PRIMARY


def set_plane(vgpu: Vgpu, *, base: int = LOW, width: int = 64, height: int = 32, stride: int = 256) -> None:
    vgpu.mmio_write(r.PLANE_FORMAT, 4, DRM_FORMAT_XRGB8888)
    vgpu.mmio_write(r.PLANE_WIDTH, 4, width)
    vgpu.mmio_write(r.PLANE_HEIGHT, 4, height)
    vgpu.mmio_write(r.PLANE_STRIDE, 4, stride)
    vgpu.mmio_write(r.PLANE_BASE_LO, 8, base)
    vgpu.mmio_write(r.PLANE_CTL, 4, r.PLANE_CTL_ENABLE)


def test_fourcc() -> None:
    assert fourcc("XR24") == DRM_FORMAT_XRGB8888 == 0x34325258


def test_disabled_plane_is_zeroed_but_succeeds() -> None:
    vgpu, _, _ = open_vgpu()
    info = vgpu.display.query_plane(DMABUF, PRIMARY)
    assert info == PlaneInfo(drm_plane_type=PRIMARY)
    assert info is not None and (info.dmabuf_id, info.size, info.x_hot) == (0, 0, NO_HOTSPOT)
    set_plane(vgpu)
    assert vgpu.display.query_plane(DMABUF, DRM_PLANE_TYPE_CURSOR) == PlaneInfo(DRM_PLANE_TYPE_CURSOR)


def test_dmabuf_ids_start_at_1_and_are_reused_while_unchanged() -> None:
    vgpu, _, _ = open_vgpu()
    set_plane(vgpu)
    first = vgpu.display.query_plane(DMABUF, PRIMARY)
    assert first is not None and first.dmabuf_id == 1
    assert (first.width, first.height, first.stride, first.size, first.gm_addr) == (64, 32, 256, 8192, LOW)
    assert vgpu.display.query_plane(DMABUF, PRIMARY) == first
    vgpu.mmio_write(r.PLANE_BASE_LO, 4, LOW + 2 * 4096)  # flip to a second buffer
    second = vgpu.display.query_plane(DMABUF, PRIMARY)
    assert second is not None and second.dmabuf_id == 2
    vgpu.mmio_write(r.PLANE_BASE_LO, 4, LOW)  # and back: the first id again
    again = vgpu.display.query_plane(DMABUF, PRIMARY)
    assert again is not None and again.dmabuf_id == 1
    vgpu.mmio_write(r.PLANE_CTL, 4, 0)
    off = vgpu.display.query_plane(DMABUF, PRIMARY)
    assert off is not None and off.dmabuf_id == 0
    assert vgpu.display.get_dmabuf(2) == second


def test_flags() -> None:
    vgpu, _, _ = open_vgpu()
    assert vgpu.display.query_plane(GFX_PLANE_TYPE_PROBE | DMABUF, PRIMARY) is None
    for flags in (GFX_PLANE_TYPE_PROBE | GFX_PLANE_TYPE_REGION, GFX_PLANE_TYPE_REGION, 0, DMABUF | 8):
        with pytest.raises(InvalidArgument) as exc:
            vgpu.display.query_plane(flags, PRIMARY)
        assert exc.value.reason == "PLANE_FLAGS_UNSUPPORTED"
    with pytest.raises(InvalidArgument):
        vgpu.display.query_plane(DMABUF, 3)


@pytest.mark.parametrize(
    ("fmt", "width", "stride", "base", "reason"),
    [
        (fourcc("NV12"), 64, 256, LOW, "PLANE_INVALID"),
        (DRM_FORMAT_XRGB8888, 64, 128, LOW, "PLANE_INVALID"),  # stride < width * 4
        (DRM_FORMAT_XRGB8888, 0, 256, LOW, "PLANE_INVALID"),
        (DRM_FORMAT_XRGB8888, 64, 256, LOW - 4096, "PLANE_OUT_OF_PARTITION"),
        (DRM_FORMAT_XRGB8888, 64, 256, LOW + 128 * MIB - 4096, "PLANE_OUT_OF_PARTITION"),
    ],
)
def test_invalid_planes(fmt: int, width: int, stride: int, base: int, reason: str) -> None:
    vgpu, _, _ = open_vgpu()
    set_plane(vgpu, width=width, stride=stride, base=base)
    vgpu.mmio_write(r.PLANE_FORMAT, 4, fmt)
    with pytest.raises(InvalidArgument) as exc:
        vgpu.display.query_plane(DMABUF, PRIMARY)
    assert exc.value.reason == reason
    if reason == "PLANE_OUT_OF_PARTITION":
        assert exc.value.errno == errno.EFAULT


def test_rgb565_is_accepted() -> None:
    vgpu, _, _ = open_vgpu()
    set_plane(vgpu, stride=128)
    vgpu.mmio_write(r.PLANE_FORMAT, 4, DRM_FORMAT_RGB565)
    info = vgpu.display.query_plane(DMABUF, PRIMARY)
    assert info is not None and info.drm_format == DRM_FORMAT_RGB565


def test_unknown_dmabuf_id_is_enoent() -> None:
    vgpu, _, _ = open_vgpu()
    with pytest.raises(NotFound) as exc:
        vgpu.display.get_dmabuf(1)
    assert exc.value.reason == "DMABUF_NOT_FOUND" and exc.value.errno == errno.ENOENT


def test_fetch_reads_the_framebuffer_through_the_gtt() -> None:
    vgpu, _, memory = open_vgpu()
    ram = memory.segments["ram"]
    ram[0x5000:0x6000] = b"\x11" * 4096  # guest page 5
    ram[0x9000:0xA000] = b"\x22" * 4096  # guest page 9
    vgpu.mmio_write(gtt_offset(LOW), 8, pte(5))
    vgpu.mmio_write(gtt_offset(LOW + 4096), 8, pte(9))
    asyncio.run(vgpu.gtt.apply_pending())
    set_plane(vgpu)
    info = vgpu.display.query_plane(DMABUF, PRIMARY)
    assert info is not None
    assert vgpu.display.fetch(info.dmabuf_id, memory) == b"\x11" * 4096 + b"\x22" * 4096


def test_release_forgets_dmabuf_ids() -> None:
    vgpu, _, _ = open_vgpu()
    set_plane(vgpu)
    vgpu.display.query_plane(DMABUF, PRIMARY)
    asyncio.run(vgpu.release())
    with pytest.raises(NotFound):
        vgpu.display.get_dmabuf(1)
