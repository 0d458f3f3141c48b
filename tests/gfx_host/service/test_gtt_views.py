"""The GTT as the CPU and the display see it: the aperture (BAR2) and the scanned-out framebuffer.

Both go through the GTT shadow.  A guest that writes GTT entries and then uses the aperture, or
flips the plane with an MMIO write, has rung no doorbell: what it mapped must be visible anyway
(GVT-g's aperture and dmabuf paths use the guest GTT as written).
"""

from __future__ import annotations

import asyncio

from tests.gfx_host.service.conftest import GVT, T4, U1, Dirs, Stubs
from tests.gfx_host.service.guest import DATA_IOVA, GuestDriver, connect
from vgpusim.common.shm.segment import Segment
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2 as pb
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.display import DRM_FORMAT_XRGB8888
from vgpusim.gfx_host.core.vgpu import REGION_BAR2
from vgpusim.iommu_type2.core import Container

FB_WIDTH, FB_HEIGHT = 64, 16  # 4 KiB at 4 bytes per pixel: one page


async def open_with_guest(
    stubs: Stubs, container: Container, dirs: Dirs, ram: Segment
) -> tuple[GuestDriver, memoryview]:
    await stubs.vendor.CreateInstance(pb.CreateInstanceRequest(uuid=U1, parent=GVT, type_id=T4))
    opened = await stubs.vendor.OpenInstance(
        pb.OpenInstanceRequest(uuid=U1, container_id=container.container_id)
    )
    port = await asyncio.to_thread(connect, opened.broker, opened.token, dirs.shm)
    view = ram.buf[:]
    guest = GuestDriver(port, view)
    await asyncio.to_thread(guest.probe)
    return guest, view


async def test_the_aperture_sees_a_fresh_gtt_entry(
    stubs: Stubs, container: Container, dirs: Dirs, ram: Segment
) -> None:
    guest, view = await open_with_guest(stubs, container, dirs, ram)
    try:
        await asyncio.to_thread(guest.map_gtt, guest.gm(0), DATA_IOVA)

        await asyncio.to_thread(guest.port.write, REGION_BAR2, 0x10, 4, 0xA5A5_5A5A)
        back = await asyncio.to_thread(guest.port.read, REGION_BAR2, 0x10, 4)

        assert back == 0xA5A5_5A5A
        assert guest.ram_dword(DATA_IOVA + 0x10) == 0xA5A5_5A5A
    finally:
        view.release()
        guest.port.close()


async def test_the_framebuffer_of_an_mmio_flip(
    stubs: Stubs, container: Container, dirs: Dirs, ram: Segment
) -> None:
    guest, view = await open_with_guest(stubs, container, dirs, ram)
    try:
        pixels = bytes(range(256)) * (FB_WIDTH * FB_HEIGHT * 4 // 256)
        view[DATA_IOVA : DATA_IOVA + len(pixels)] = pixels
        await asyncio.to_thread(guest.map_gtt, guest.gm(0), DATA_IOVA)
        for offset, value in (
            (r.PLANE_FORMAT, DRM_FORMAT_XRGB8888),
            (r.PLANE_STRIDE, FB_WIDTH * 4),
            (r.PLANE_WIDTH, FB_WIDTH),
            (r.PLANE_HEIGHT, FB_HEIGHT),
            (r.PLANE_CTL, r.PLANE_CTL_ENABLE),
        ):
            await asyncio.to_thread(guest.write, offset, value)
        await asyncio.to_thread(guest.write, r.PLANE_BASE_LO, guest.gm(0), 8)
        await asyncio.to_thread(guest.read, r.SCRATCH)  # orders after the writes

        plane = (
            await stubs.host.QueryGfxPlane(pb.QueryGfxPlaneRequest(uuid=U1, plane_type=pb.PLANE_TYPE_PRIMARY))
        ).plane
        fb = await stubs.host.GetFramebuffer(pb.GetFramebufferRequest(uuid=U1, dmabuf_id=plane.dmabuf_id))

        assert (plane.width, plane.height, plane.drm_format) == (FB_WIDTH, FB_HEIGHT, DRM_FORMAT_XRGB8888)
        assert fb.data == pixels
    finally:
        view.release()
        guest.port.close()
