"""VFIO region info, offset decoding and access splitting."""

import pytest

from vgpusim.common.errors import InvalidArgument
from vgpusim.qemu_frontend.core.regions import (
    DEVICE_PCI,
    DEVICE_RESET,
    OFFSET_SHIFT,
    REGION_CONFIG,
    REGION_READ,
    REGION_WRITE,
    DeviceDescription,
    RegionInfo,
    read_region,
    write_region,
)

DESC = DeviceDescription(
    flags=DEVICE_PCI | DEVICE_RESET,
    regions=(
        RegionInfo(0, REGION_READ | REGION_WRITE, 1 << 24),
        RegionInfo(REGION_CONFIG, REGION_READ | REGION_WRITE, 4096),
        RegionInfo(6, REGION_READ, 4096),
    ),
    num_irqs=5,
)


class FakePort:
    def __init__(self) -> None:
        self.mem: dict[tuple[int, int], int] = {}
        self.log: list[tuple[str, int, int, int]] = []

    def read(self, region: int, offset: int, size: int) -> int:
        self.log.append(("r", region, offset, size))
        return int.from_bytes(bytes(self.mem.get((region, offset + i), 0) for i in range(size)), "little")

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        self.log.append(("w", region, offset, size))
        for i, byte in enumerate(value.to_bytes(size, "little")):
            self.mem[(region, offset + i)] = byte


def test_unimplemented_regions_report_size_zero_and_bad_index_is_einval() -> None:
    assert DESC.num_regions == 9
    assert DESC.region(1).size == 0
    assert DESC.region(REGION_CONFIG).offset == REGION_CONFIG << OFFSET_SHIFT
    with pytest.raises(InvalidArgument) as err:
        DESC.region(9)
    assert err.value.reason == "BAD_REGION_INDEX"


def test_unaligned_access_is_split_naturally() -> None:
    port = FakePort()
    write_region(port, DESC, 3, bytes(range(1, 14)))
    assert [(op[2], op[3]) for op in port.log] == [(3, 1), (4, 4), (8, 8)]
    assert read_region(port, DESC, 3, 13) == bytes(range(1, 14))


@pytest.mark.parametrize(
    ("offset", "size", "reason"),
    [
        (REGION_CONFIG << OFFSET_SHIFT | 4095, 2, "OUT_OF_REGION"),
        (1 << OFFSET_SHIFT, 4, "OUT_OF_REGION"),
        (0, 0, "BAD_ACCESS_SIZE"),
        (12 << OFFSET_SHIFT, 4, "BAD_REGION_INDEX"),
    ],
)
def test_bad_accesses(offset: int, size: int, reason: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        read_region(FakePort(), DESC, offset, size)
    assert err.value.reason == reason


def test_read_only_region_refuses_writes() -> None:
    with pytest.raises(InvalidArgument) as err:
        write_region(FakePort(), DESC, 6 << OFFSET_SHIFT, b"\0\0\0\0")
    assert err.value.reason == "REGION_ACCESS"
