"""Display export: VFIO_DEVICE_QUERY_GFX_PLANE / GET_GFX_DMABUF semantics (kernel-mdev §3.5).

The plane comes from the display plane registers (``registers.PLANE_*``).  A query with flags
``DMABUF`` returns a :class:`PlaneInfo`:

- plane disabled (or the cursor, which this device does not have): zeroed format, size, width and
  height, ``dmabuf_id`` 0; the query still succeeds;
- plane enabled: the description (format, size, stride, GM address) gets a dmabuf id; ids start
  at 1 and the **same id is returned while the description is unchanged** (and again when the
  guest flips back to a buffer it showed before, as GVT-g compares with all its dmabuf objects),
  so the frontend can cache one export per id;
- an enabled plane with an unknown format or impossible geometry fails with ``PLANE_INVALID``,
  one outside the vGPU's partition with ``PLANE_OUT_OF_PARTITION`` (EFAULT).

``PROBE|DMABUF`` answers None (supported); ``PROBE|REGION`` and ``REGION`` are InvalidArgument
(this device exports dma-bufs only, as GVT-g).  :meth:`Display.fetch` returns the framebuffer
bytes of a dmabuf id, read through the GTT shadow (a ``GttFault`` if the pages are not usable).

Glossary:
- fourcc: DRM pixel format code, e.g. ``XR24`` (XRGB8888) = 0x34325258.
- dmabuf id: per-device token for an exported plane description (0 = no plane).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from vgpusim.common.errors import InvalidArgument, NotFound
from vgpusim.gfx_host.core.gtt import Gtt, HostMemory, read_memory
from vgpusim.gfx_host.core.regfile import RegisterFile
from vgpusim.gfx_host.core.resources import Extent

DRM_PLANE_TYPE_PRIMARY: Final = 1
DRM_PLANE_TYPE_CURSOR: Final = 2
GFX_PLANE_TYPE_PROBE: Final = 1 << 0
GFX_PLANE_TYPE_DMABUF: Final = 1 << 1
GFX_PLANE_TYPE_REGION: Final = 1 << 2
NO_HOTSPOT: Final = 0xFFFF_FFFF
MAX_SURFACE_SIZE: Final = 36 << 20  # GVT-g max_surface_size
MAX_DIMENSION: Final = 16384
_MAX_DMABUFS = 64


def fourcc(code: str) -> int:
    """The DRM fourcc of a 4-character code, e.g. ``fourcc("XR24")``."""
    a, b, c, d = code.encode("ascii")
    return a | b << 8 | c << 16 | d << 24


DRM_FORMAT_XRGB8888: Final = fourcc("XR24")
DRM_FORMAT_ARGB8888: Final = fourcc("AR24")
DRM_FORMAT_XBGR8888: Final = fourcc("XB24")
DRM_FORMAT_ABGR8888: Final = fourcc("AB24")
DRM_FORMAT_RGB565: Final = fourcc("RG16")
BYTES_PER_PIXEL: Final = {
    DRM_FORMAT_XRGB8888: 4,
    DRM_FORMAT_ARGB8888: 4,
    DRM_FORMAT_XBGR8888: 4,
    DRM_FORMAT_ABGR8888: 4,
    DRM_FORMAT_RGB565: 2,
}


@dataclass(frozen=True, slots=True)
class PlaneInfo:
    """``vfio_device_gfx_plane_info`` out-fields, plus ``gm_addr`` (0 when disabled)."""

    drm_plane_type: int
    drm_format: int = 0
    drm_format_mod: int = 0
    width: int = 0
    height: int = 0
    stride: int = 0
    size: int = 0
    x_pos: int = 0
    y_pos: int = 0
    x_hot: int = NO_HOTSPOT
    y_hot: int = NO_HOTSPOT
    dmabuf_id: int = 0
    gm_addr: int = 0


class Display:
    """The display of one vGPU: plane queries and dmabuf ids."""

    def __init__(self, regs: RegisterFile, gtt: Gtt, partition: Sequence[Extent]) -> None:
        self._regs = regs
        self._gtt = gtt
        self._ranges = tuple(e for e in partition if e.size)
        self._by_desc: dict[tuple[int, int, int, int, int], PlaneInfo] = {}
        self._by_id: dict[int, PlaneInfo] = {}
        self._next_id = 1

    def query_plane(self, flags: int, plane_type: int) -> PlaneInfo | None:
        """QUERY_GFX_PLANE: None for a supported probe, else the plane (zeroed when disabled)."""
        if plane_type not in (DRM_PLANE_TYPE_PRIMARY, DRM_PLANE_TYPE_CURSOR):
            raise InvalidArgument(f"unknown drm_plane_type {plane_type}", reason="PLANE_TYPE_INVALID")
        if flags == GFX_PLANE_TYPE_PROBE | GFX_PLANE_TYPE_DMABUF:
            return None
        if flags != GFX_PLANE_TYPE_DMABUF:
            raise InvalidArgument(
                f"gfx plane flags {flags:#x} not supported (DMABUF only)",
                reason="PLANE_FLAGS_UNSUPPORTED",
                metadata={"flags": hex(flags)},
            )
        p = self._regs.plane()
        if plane_type == DRM_PLANE_TYPE_CURSOR or not p.enabled:
            return PlaneInfo(drm_plane_type=plane_type)
        bpp = BYTES_PER_PIXEL.get(p.drm_format)
        problem = None
        if bpp is None:
            problem = f"unsupported format {p.drm_format:#x}"
        elif not (0 < p.width <= MAX_DIMENSION and 0 < p.height <= MAX_DIMENSION):
            problem = f"bad size {p.width}x{p.height}"
        elif p.stride < p.width * bpp or p.stride % 4 or p.stride * p.height > MAX_SURFACE_SIZE:
            problem = f"bad stride {p.stride} for {p.width}x{p.height}"
        if problem:
            raise InvalidArgument(f"display plane: {problem}", reason="PLANE_INVALID")
        size = (p.stride * p.height + 0xFFF) & ~0xFFF
        if not any(e.contains(p.base, size) for e in self._ranges):
            raise InvalidArgument(
                f"display plane at {p.base:#x} (+{size:#x}) is outside the vGPU's partition",
                reason="PLANE_OUT_OF_PARTITION",
                errno=errno.EFAULT,
                metadata={"gm_addr": hex(p.base), "size": str(size)},
            )
        key = (p.drm_format, p.width, p.height, p.stride, p.base)
        info = self._by_desc.get(key)
        if info is None:
            info = PlaneInfo(
                drm_plane_type=plane_type,
                drm_format=p.drm_format,
                width=p.width,
                height=p.height,
                stride=p.stride,
                size=size,
                dmabuf_id=self._next_id,
                gm_addr=p.base,
            )
            self._next_id += 1
            if len(self._by_desc) >= _MAX_DMABUFS:
                oldest = next(iter(self._by_desc))
                del self._by_id[self._by_desc.pop(oldest).dmabuf_id]
            self._by_desc[key] = info
            self._by_id[info.dmabuf_id] = info
        return info

    def get_dmabuf(self, dmabuf_id: int) -> PlaneInfo:
        """GET_GFX_DMABUF: the plane a previously reported id stands for; NotFound (ENOENT) if unknown."""
        info = self._by_id.get(dmabuf_id)
        if info is None:
            raise NotFound(
                f"no dmabuf with id {dmabuf_id}",
                reason="DMABUF_NOT_FOUND",
                errno=errno.ENOENT,
                metadata={"dmabuf_id": str(dmabuf_id)},
            )
        return info

    def fetch(self, dmabuf_id: int, memory: HostMemory) -> bytes:
        """The framebuffer bytes (``stride * height``) of ``dmabuf_id``, through the GTT shadow."""
        info = self.get_dmabuf(dmabuf_id)
        return read_memory(self._gtt, memory, info.gm_addr, info.stride * info.height)

    def clear(self) -> None:
        """Forget every dmabuf id; ids restart at 1 (the device was released)."""
        self._by_desc.clear()
        self._by_id.clear()
        self._next_id = 1
