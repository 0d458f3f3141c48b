"""The screenshot PNG encoder: chunk structure, CRCs, filter bytes, pixel conversion per DRM format."""

from __future__ import annotations

import struct
import zlib

import pytest

from vgpusim.common.errors import InvalidArgument, NotSupported
from vgpusim.qemu_frontend.png import (
    DRM_FORMAT_RGB565,
    DRM_FORMAT_XRGB8888,
    encode_rgb,
    fourcc,
    framebuffer_to_png,
)


def read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB) of an 8-bit RGB PNG, checking every chunk's CRC and filter byte."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        pos += 12 + length
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, comp, filt, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(chunks[1][1])
    assert len(raw) == height * (1 + 3 * width)
    rows = []
    for y in range(height):
        line = raw[y * (1 + 3 * width) : (y + 1) * (1 + 3 * width)]
        assert line[0] == 0  # filter type None
        rows.append(line[1:])
    return width, height, rows


def test_fourcc_of_xrgb8888() -> None:
    assert fourcc("XR24") == 0x34325258 == DRM_FORMAT_XRGB8888


def test_rgb_round_trip() -> None:
    rgb = bytes(range(2 * 3 * 3))
    width, height, rows = read_png(encode_rgb(3, 2, rgb))
    assert (width, height) == (3, 2)
    assert b"".join(rows) == rgb


def test_xrgb8888_with_stride_padding() -> None:
    # 2x2, stride 12 (4 bytes of padding per row); pixels stored B, G, R, X
    row0 = bytes([0x01, 0x02, 0x03, 0xFF, 0x11, 0x12, 0x13, 0xFF]) + b"\xee" * 4
    row1 = bytes([0x21, 0x22, 0x23, 0x00, 0x31, 0x32, 0x33, 0x00]) + b"\xee" * 4
    width, height, rows = read_png(framebuffer_to_png(DRM_FORMAT_XRGB8888, 2, 2, 12, row0 + row1))
    assert (width, height) == (2, 2)
    assert rows == [bytes([3, 2, 1, 0x13, 0x12, 0x11]), bytes([0x23, 0x22, 0x21, 0x33, 0x32, 0x31])]


def test_xbgr8888_keeps_byte_order() -> None:
    data = bytes([10, 20, 30, 0])
    _, _, rows = read_png(framebuffer_to_png(fourcc("XB24"), 1, 1, 4, data))
    assert rows == [bytes([10, 20, 30])]


@pytest.mark.parametrize(
    ("pixel", "rgb"),
    [
        (0xFFFF, (255, 255, 255)),
        (0x0000, (0, 0, 0)),
        (0xF800, (255, 0, 0)),
        (0x07E0, (0, 255, 0)),
        (0x001F, (0, 0, 255)),
    ],
)
def test_rgb565_expands_by_bit_replication(pixel: int, rgb: tuple[int, int, int]) -> None:
    _, _, rows = read_png(framebuffer_to_png(DRM_FORMAT_RGB565, 1, 1, 2, pixel.to_bytes(2, "little")))
    assert rows == [bytes(rgb)]


def test_rgb565_mid_green() -> None:
    g6 = 0b100001  # 33 -> (33 << 2) | (33 >> 4) = 134
    _, _, rows = read_png(framebuffer_to_png(DRM_FORMAT_RGB565, 1, 1, 2, (g6 << 5).to_bytes(2, "little")))
    assert rows == [bytes([0, 134, 0])]


def test_large_frame_size_and_content() -> None:
    width, height = 640, 480
    data = bytes((x * 7 + y) & 0xFF for y in range(height) for x in range(width * 4))
    w, h, rows = read_png(framebuffer_to_png(DRM_FORMAT_XRGB8888, width, height, width * 4, data))
    assert (w, h, len(rows)) == (width, height, height)
    assert rows[5][:3] == bytes([data[5 * width * 4 + 2], data[5 * width * 4 + 1], data[5 * width * 4]])


def test_unsupported_format() -> None:
    with pytest.raises(NotSupported) as info:
        framebuffer_to_png(fourcc("NV12"), 2, 2, 8, bytes(16))
    assert info.value.reason == "UNSUPPORTED_FORMAT"


@pytest.mark.parametrize(
    ("width", "height", "stride", "size"),
    [(0, 1, 4, 4), (1, 0, 4, 4), (2, 1, 4, 8), (2, 2, 8, 12), (20000, 1, 80000, 80000)],
)
def test_bad_geometry(width: int, height: int, stride: int, size: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        framebuffer_to_png(DRM_FORMAT_XRGB8888, width, height, stride, bytes(size))
    assert info.value.reason == "BAD_IMAGE_SIZE"


def test_encode_rgb_checks_length() -> None:
    with pytest.raises(InvalidArgument):
        encode_rgb(2, 2, bytes(11))
