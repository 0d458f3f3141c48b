"""A small PNG encoder for screenshots: DRM framebuffers in, 8-bit RGB PNG out (zlib only, no Pillow).

GetScreenshot fetches the primary plane's framebuffer from gfx_host (rows of ``stride`` bytes in
a DRM format) and returns it as a PNG.  The pixels are converted row by row with slice copies
(no per-pixel Python loop), every scanline gets filter type 0 (None), and the image data is one
zlib stream in one IDAT chunk.

PNG layout written (RFC 2083; all integers big endian):

| part | content |
|---|---|
| signature | ``89 50 4E 47 0D 0A 1A 0A`` |
| IHDR | width u32, height u32, bit depth 8, colour type 2 (RGB), compression 0, filter 0, interlace 0 |
| IDAT | zlib(for each row: filter byte 0, then width * 3 bytes R, G, B) |
| IEND | empty |

Each chunk is ``length u32, type, data, CRC-32 of type + data``.

Glossary:
- fourcc: DRM format code; ``XR24`` (XRGB8888) is stored little endian as bytes B, G, R, X.
- stride: bytes from one row of the framebuffer to the next (>= width * bytes per pixel).
"""

from __future__ import annotations

import struct
import zlib

from vgpusim.common.errors import InvalidArgument, NotSupported

__all__ = ["DRM_FORMAT_XRGB8888", "SUPPORTED_FORMATS", "encode_rgb", "fourcc", "framebuffer_to_png"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_DIMENSION = 16384


def fourcc(code: str) -> int:
    """The DRM fourcc of a 4-character code: ``fourcc("XR24") == 0x34325258``."""
    a, b, c, d = code.encode("ascii")
    return a | b << 8 | c << 16 | d << 24


DRM_FORMAT_XRGB8888 = fourcc("XR24")
DRM_FORMAT_ARGB8888 = fourcc("AR24")
DRM_FORMAT_XBGR8888 = fourcc("XB24")
DRM_FORMAT_ABGR8888 = fourcc("AB24")
DRM_FORMAT_RGB565 = fourcc("RG16")
# Byte positions of R, G, B inside a 32-bit pixel as stored in memory (little endian).
_RGB_POSITIONS = {
    DRM_FORMAT_XRGB8888: (2, 1, 0),
    DRM_FORMAT_ARGB8888: (2, 1, 0),
    DRM_FORMAT_XBGR8888: (0, 1, 2),
    DRM_FORMAT_ABGR8888: (0, 1, 2),
}
SUPPORTED_FORMATS: frozenset[int] = frozenset((*_RGB_POSITIONS, DRM_FORMAT_RGB565))

# RGB565 (little endian: low byte L = gggbbbbb, high byte H = rrrrrggg) expanded to 8 bits per
# channel by bit replication; each 8-bit channel is an OR of translations of L and H.
_R_FROM_H = bytes(((h >> 3) << 3) | (h >> 5) for h in range(256))
_G_FROM_H = bytes(((h & 7) << 5) | ((h & 7) >> 1) for h in range(256))
_G_FROM_L = bytes((lo >> 5) << 2 for lo in range(256))
_B_FROM_L = bytes(((lo & 31) << 3) | ((lo & 31) >> 2) for lo in range(256))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_rgb(width: int, height: int, rgb: bytes, *, level: int = 6) -> bytes:
    """A PNG of ``width`` x ``height`` pixels given as packed 8-bit RGB rows (``width * 3`` bytes each)."""
    if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION):
        raise InvalidArgument(f"image size {width}x{height} out of range", reason="BAD_IMAGE_SIZE")
    row = width * 3
    if len(rgb) != row * height:
        raise InvalidArgument(f"{len(rgb)} bytes of RGB for {width}x{height}", reason="BAD_IMAGE_SIZE")
    raw = bytearray((row + 1) * height)  # filter byte 0 starts every scanline
    for y in range(height):
        start = y * (row + 1) + 1
        raw[start : start + row] = rgb[y * row : (y + 1) * row]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", zlib.compress(raw, level)), _chunk(b"IEND", b""))
    )


def _row_rgb(fmt: int, src: bytes, width: int) -> bytes:
    out = bytearray(width * 3)
    if fmt == DRM_FORMAT_RGB565:
        low, high = src[0::2], src[1::2]
        out[0::3] = high.translate(_R_FROM_H)
        green_h, green_l = high.translate(_G_FROM_H), low.translate(_G_FROM_L)
        green = int.from_bytes(green_h, "big") | int.from_bytes(green_l, "big")
        out[1::3] = green.to_bytes(width, "big")
        out[2::3] = low.translate(_B_FROM_L)
        return bytes(out)
    r, g, b = _RGB_POSITIONS[fmt]
    out[0::3] = src[r::4]
    out[1::3] = src[g::4]
    out[2::3] = src[b::4]
    return bytes(out)


def framebuffer_to_png(drm_format: int, width: int, height: int, stride: int, data: bytes) -> bytes:
    """The PNG of a framebuffer of ``height`` rows of ``stride`` bytes in DRM format ``drm_format``.

    Errors: NotSupported (``UNSUPPORTED_FORMAT``), InvalidArgument (``BAD_IMAGE_SIZE``: zero or
    huge size, stride shorter than a row, fewer bytes than the geometry needs).
    """
    if drm_format not in SUPPORTED_FORMATS:
        raise NotSupported(
            f"cannot convert DRM format {drm_format:#010x} to PNG",
            reason="UNSUPPORTED_FORMAT",
            metadata={"drm_format": f"{drm_format:#010x}"},
        )
    bpp = 2 if drm_format == DRM_FORMAT_RGB565 else 4
    if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION) or stride < width * bpp:
        raise InvalidArgument(
            f"framebuffer {width}x{height} with stride {stride} is not a valid image", reason="BAD_IMAGE_SIZE"
        )
    if len(data) < stride * (height - 1) + width * bpp:
        raise InvalidArgument(
            f"framebuffer holds {len(data)} bytes, {width}x{height} stride {stride} needs more",
            reason="BAD_IMAGE_SIZE",
        )
    rows = [_row_rgb(drm_format, data[y * stride : y * stride + width * bpp], width) for y in range(height)]
    return encode_rgb(width, height, b"".join(rows))
