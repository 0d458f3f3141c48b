"""The display side of the VFIO device API: plane queries, dma-buf reads and PNG screenshots.

``VFIO_DEVICE_QUERY_GFX_PLANE`` semantics (kernel-mdev §3.5) are checked here, before gfx_host is
asked: ``PROBE|DMABUF`` answers "supported" without a query; ``REGION`` (with or without PROBE)
is not supported by this device (as GVT-g, which exports dma-bufs only) and gives EINVAL; a real
query sets exactly ``DMABUF``.  A disabled plane is still a successful query, with a zeroed plane
and ``dmabuf_id`` 0.  A screenshot queries the primary plane, reads its dma-buf and encodes it.

Glossary:
- dmabuf id: gfx_host's token for an exported plane description (from 1; 0 = none).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from vgpusim.common.errors import InvalidArgument, NotFound, WrongState
from vgpusim.qemu_frontend.clients import Framebuffer, GfxPeer, Plane
from vgpusim.qemu_frontend.png import framebuffer_to_png

__all__ = [
    "PLANE_DMABUF",
    "PLANE_PROBE",
    "PLANE_REGION",
    "Screenshot",
    "get_dmabuf",
    "query_plane",
    "screenshot",
]

PLANE_PROBE: Final = 1 << 0
PLANE_DMABUF: Final = 1 << 1
PLANE_REGION: Final = 1 << 2
DRM_PLANE_TYPE_PRIMARY: Final = 1
DRM_PLANE_TYPE_CURSOR: Final = 2


@dataclass(frozen=True, slots=True)
class Screenshot:
    """A PNG of the primary plane."""

    png: bytes
    width: int
    height: int


async def query_plane(gfx: GfxPeer, uuid: str, flags: int, plane_type: int) -> Plane:
    """QUERY_GFX_PLANE. Errors: InvalidArgument (``BAD_PLANE_FLAGS``, ``BAD_PLANE_TYPE``), gfx_host's."""
    if flags & PLANE_REGION:
        raise InvalidArgument(
            "this device exports planes as dma-bufs only (GFX_PLANE_TYPE_REGION is not supported)",
            reason="BAD_PLANE_FLAGS",
            metadata={"flags": str(flags)},
        )
    if flags == PLANE_PROBE | PLANE_DMABUF:
        return Plane()
    if flags != PLANE_DMABUF:
        raise InvalidArgument(
            f"plane query flags {flags:#x}: expected DMABUF (2) or PROBE|DMABUF (3)",
            reason="BAD_PLANE_FLAGS",
            metadata={"flags": str(flags)},
        )
    if plane_type not in (DRM_PLANE_TYPE_PRIMARY, DRM_PLANE_TYPE_CURSOR):
        raise InvalidArgument(
            f"drm_plane_type {plane_type}: expected PRIMARY (1) or CURSOR (2)",
            reason="BAD_PLANE_TYPE",
            metadata={"drm_plane_type": str(plane_type)},
        )
    return await gfx.query_plane(uuid, plane_type)


async def get_dmabuf(gfx: GfxPeer, uuid: str, dmabuf_id: int) -> Framebuffer:
    """GET_GFX_DMABUF, as bytes. Errors: NotFound (``UNKNOWN_DMABUF``), gfx_host's."""
    if dmabuf_id == 0:
        raise NotFound("dmabuf id 0 names no plane", reason="UNKNOWN_DMABUF", metadata={"dmabuf_id": "0"})
    return await gfx.get_framebuffer(uuid, dmabuf_id)


def _disabled(uuid: str) -> WrongState:
    return WrongState(
        f"the display of vGPU {uuid} is disabled", reason="DISPLAY_DISABLED", metadata={"uuid": uuid}
    )


async def screenshot(gfx: GfxPeer, uuid: str) -> Screenshot:
    """The primary plane as a PNG. Errors: WrongState (``DISPLAY_DISABLED``), NotSupported
    (``UNSUPPORTED_FORMAT``), gfx_host's."""
    plane = await gfx.query_plane(uuid, DRM_PLANE_TYPE_PRIMARY)
    if plane.dmabuf_id == 0:
        raise _disabled(uuid)
    fb = await gfx.get_framebuffer(uuid, plane.dmabuf_id)
    p = fb.plane
    if p.dmabuf_id == 0 or p.width == 0 or p.height == 0:
        raise _disabled(uuid)
    png = await asyncio.to_thread(framebuffer_to_png, p.drm_format, p.width, p.height, p.stride, fb.data)
    return Screenshot(png, p.width, p.height)
