"""vfio_dma_rw and translate: chunking, protection, all-or-nothing, dirty marks, the fault log."""

from __future__ import annotations

import pytest

from tests.iommu_type2.helpers import MIB, PAGE, RAM, add_device, mapping
from vgpusim.common.errors import InvalidArgument, PermissionDenied
from vgpusim.iommu_type2.core import (
    PROT_READ,
    PROT_WRITE,
    Container,
    FaultRecord,
    HostRun,
    InMemorySegmentStore,
    IommuMode,
    Mapper,
    MapperConfig,
)


@pytest.fixture
def split(ctr: Container) -> Container:
    """Two adjacent 2-page mappings whose segment ranges are not adjacent (0 and 1 MiB)."""
    ctr.map_dma_batch([mapping(0, 2 * PAGE), mapping(2 * PAGE, 2 * PAGE, offset=MIB)])
    add_device(ctr)
    return ctr


def test_write_then_read_across_mappings(split: Container, store: InMemorySegmentStore) -> None:
    data = bytes(range(256)) * 16
    split.dma_write("vgpu0", 2 * PAGE - 100, data)
    assert split.dma_read("vgpu0", 2 * PAGE - 100, len(data)) == data
    ram = store.view(RAM)
    assert bytes(ram[2 * PAGE - 100 : 2 * PAGE]) == data[:100]
    assert bytes(ram[MIB : MIB + len(data) - 100]) == data[100:]
    stats = split.statistics()
    assert (stats.dma_write_bytes_total, stats.dma_read_bytes_total) == (len(data), len(data))


def test_access_is_all_or_nothing(split: Container, store: InMemorySegmentStore) -> None:
    with pytest.raises(InvalidArgument) as error:
        split.dma_write("vgpu0", 4 * PAGE - 4, b"\xff" * 8)  # the last 4 bytes fall in a hole
    assert (error.value.reason, error.value.metadata["iova"]) == ("DMA_FAULT", hex(4 * PAGE))
    assert bytes(store.view(RAM)[MIB + 2 * PAGE - 4 : MIB + 2 * PAGE]) == bytes(4)


def test_protection_as_vfio_dma_rw(ctr: Container) -> None:
    ctr.map_dma_batch([mapping(0, PAGE, prot=PROT_READ), mapping(PAGE, PAGE, prot=PROT_WRITE)])
    add_device(ctr)
    assert ctr.dma_read("vgpu0", 0, 16) == bytes(16)
    for call in (
        lambda: ctr.dma_write("vgpu0", 0, b"x"),  # read-only
        lambda: ctr.dma_read("vgpu0", PAGE, 1),  # write-only: vfio_dma_rw always needs READ
        lambda: ctr.dma_write("vgpu0", PAGE, b"x"),  # ... writes too
    ):
        with pytest.raises(PermissionDenied) as error:
            call()
        assert (error.value.reason, error.value.metadata["errno"]) == ("PROT_MISMATCH", "EPERM")


def test_translate(split: Container) -> None:
    assert split.translate("vgpu0", PAGE + 8, 2 * PAGE, False) == (
        HostRun(PAGE + 8, RAM, PAGE + 8, PAGE - 8),
        HostRun(2 * PAGE, RAM, MIB, PAGE + 8),
    )
    split.map_dma(mapping(4 * PAGE, PAGE, offset=MIB + 2 * PAGE, prot=PROT_WRITE))
    runs = split.translate("vgpu0", 2 * PAGE, 3 * PAGE, True)  # a write needs only WRITE
    assert runs == (HostRun(2 * PAGE, RAM, MIB, 3 * PAGE),)  # contiguous in the segment: one run
    with pytest.raises(PermissionDenied):
        split.translate("vgpu0", 4 * PAGE, 1, False)
    assert split.statistics().translations_total == 2


def test_emulated_mode_records_no_faults(split: Container) -> None:
    with pytest.raises(InvalidArgument):
        split.dma_read("vgpu0", 8 * MIB, 4)
    assert split.faults().faults_total == 0
    assert split.statistics().faults_total == 0


def test_hardware_mode_records_faults(hw: Container) -> None:
    hw.map_dma(mapping(0, PAGE, prot=PROT_READ))
    add_device(hw, "dev")
    with pytest.raises(InvalidArgument):
        hw.translate("dev", 8 * MIB, 64, False)
    with pytest.raises(PermissionDenied):
        hw.dma_write("dev", 0, b"abc")
    with pytest.raises(InvalidArgument):
        hw.dma_read("dev", PAGE - 2, 4)
    log = hw.faults()
    assert log.faults == (
        FaultRecord(8 * MIB, 64, False, "dev", "DMA_FAULT"),
        FaultRecord(0, 3, True, "dev", "PROT_MISMATCH"),
        FaultRecord(PAGE - 2, 4, False, "dev", "DMA_FAULT"),
    )
    assert log.faults_total == hw.statistics().faults_total == 3
    with pytest.raises(InvalidArgument):
        hw.dma_read("dev", 0, 0)  # a malformed request is not a fault
    assert hw.faults().faults_total == 3


def test_fault_log_keeps_the_newest(store: InMemorySegmentStore) -> None:
    mapper = Mapper(store, MapperConfig(fault_log_size=4))
    container = mapper.create_container("vm", IommuMode.HARDWARE)
    container.attach_device("dev")
    for i in range(10):
        with pytest.raises(InvalidArgument):
            container.translate("dev", i * PAGE, 1, True)
    log = container.faults()
    assert [fault.iova for fault in log.faults] == [6 * PAGE, 7 * PAGE, 8 * PAGE, 9 * PAGE]
    assert log.faults_total == 10
