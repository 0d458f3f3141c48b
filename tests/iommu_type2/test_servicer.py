"""Contract tests of IommuType2Service: a real grpc.aio server, real segments, what a client sees.

Every error is checked as the client rebuilds it (``vgpusim.common.clients.call``): the exact
domain class (hence the status code) and the ``ErrorInfo`` reason. The long-lived calls
(``KeepAlive``, ``WatchUnmap``) and the unmap handshake are in ``test_servicer_streams.py``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vgpusim.common.errors import (
    AlreadyExists,
    Exhausted,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TooBig,
    WrongState,
)
from vgpusim.common.rpc import error_from_rpc_error
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2 as pb
from vgpusim.gen.iommu_type2.v1 import iommu_type2_pb2_grpc as pb_grpc
from vgpusim.iommu_type2.servicer import IommuType2Servicer

if TYPE_CHECKING:
    from tests.iommu_type2.conftest import ServiceHarness

PAGE = 4096
MIB = 1 << 20


def _range(cid: str, iova: int, size: int, **kw: int) -> pb.UnmapDmaRequest:
    return pb.UnmapDmaRequest(container_id=cid, range=pb.UnmapRange(iova=iova, size=size), **kw)


def test_every_rpc_is_implemented() -> None:
    methods = pb.DESCRIPTOR.services_by_name["IommuType2Service"].methods_by_name
    assert len(methods) == 22
    for name in methods:
        assert getattr(IommuType2Servicer, name) is not getattr(pb_grpc.IommuType2ServiceServicer, name), name


async def test_container_create_list_get_info_destroy(iommu: ServiceHarness) -> None:
    a = await iommu.container("vm-a")
    b = await iommu.container("vm-b", mode=pb.IOMMU_MODE_HARDWARE, ram=None)
    listed = (await iommu.call("ListContainers", pb.ListContainersRequest())).containers
    assert {(c.container_id, c.owner, c.mode) for c in listed} == {
        (a, "vm-a", pb.IOMMU_MODE_EMULATED),
        (b, "vm-b", pb.IOMMU_MODE_HARDWARE),
    }
    mine = (await iommu.call("ListContainers", pb.ListContainersRequest(owner="vm-a"))).containers
    assert [(c.container_id, list(c.segments)) for c in mine] == [(a, ["ram"])]
    info = await iommu.call("GetInfo", pb.GetInfoRequest(container_id=b))
    assert (info.iova_pgsizes, info.dma_avail, info.mode) == (0xFFFFFFFFFFFFF000, 16, pb.IOMMU_MODE_HARDWARE)
    assert (info.migration_pgsize_bitmap, info.max_dirty_bitmap_size) == (PAGE, 268435456)
    await iommu.map(a, 0, MIB)
    reply = await iommu.call("DestroyContainer", pb.DestroyContainerRequest(container_id=a))
    assert reply.unmapped_bytes == MIB
    await iommu.fails("GetInfo", pb.GetInfoRequest(container_id=a), NotFound, "UNKNOWN_CONTAINER")
    await iommu.fails(
        "DestroyContainer", pb.DestroyContainerRequest(container_id=a), NotFound, "UNKNOWN_CONTAINER"
    )
    assert iommu.service.store.names() == ()  # the segment no container uses was unmapped


async def test_create_container_rejects_unspecified_mode_and_empty_owner(iommu: ServiceHarness) -> None:
    await iommu.fails("CreateContainer", pb.CreateContainerRequest(owner="vm"), InvalidArgument, "BAD_MODE")
    request = pb.CreateContainerRequest(owner="", mode=pb.IOMMU_MODE_EMULATED)
    await iommu.fails("CreateContainer", request, InvalidArgument, "BAD_NAME")


async def test_check_extension(iommu: ServiceHarness) -> None:
    cid = await iommu.container(ram=None)

    async def supported(extension: int) -> bool:
        request = pb.CheckExtensionRequest(container_id=cid, extension=extension)  # type: ignore[arg-type]
        return bool((await iommu.call("CheckExtension", request)).supported)

    assert [await supported(e) for e in (1, 3, 9, 10)] == [True, True, True, True]
    assert [await supported(e) for e in (2, 4, 5, 8, 77)] == [False] * 5
    request = pb.CheckExtensionRequest(container_id=cid)
    await iommu.fails("CheckExtension", request, InvalidArgument, "BAD_EXTENSION")


async def test_register_segment_checks_the_file(iommu: ServiceHarness) -> None:
    cid = await iommu.container(ram=None)
    iommu.segment("ram", 4 * PAGE)

    def register(segment: str, size: int) -> pb.RegisterSegmentRequest:
        return pb.RegisterSegmentRequest(container_id=cid, segment=segment, size=size)

    await iommu.fails("RegisterSegment", register("gone", PAGE), NotFound, "SEGMENT_MISSING")
    await iommu.fails("RegisterSegment", register("ram", 5 * PAGE), InvalidArgument, "SEGMENT_TOO_SMALL")
    await iommu.fails("RegisterSegment", register("ram", PAGE + 1), InvalidArgument, "MISALIGNED")
    await iommu.call("RegisterSegment", register("ram", 2 * PAGE))
    await iommu.fails("RegisterSegment", register("ram", 2 * PAGE), AlreadyExists, "SEGMENT_REGISTERED")
    await iommu.fails(
        "MapDma",
        pb.MapDmaRequest(
            container_id=cid,
            mapping=pb.DmaMapping(iova=0, size=4 * PAGE, segment="ram", prot=pb.Prot(read=True)),
        ),
        InvalidArgument,
        "OUTSIDE_SEGMENT",  # only the registered size is mappable
    )
    await iommu.map(cid, 0, 2 * PAGE)
    unregister = pb.UnregisterSegmentRequest(container_id=cid, segment="ram")
    await iommu.fails("UnregisterSegment", unregister, WrongState, "SEGMENT_IN_USE")
    await iommu.call("UnmapDma", pb.UnmapDmaRequest(container_id=cid, all=pb.UnmapAll()))
    await iommu.call("UnregisterSegment", unregister)
    await iommu.fails("UnregisterSegment", unregister, NotFound, "UNKNOWN_SEGMENT")
    assert iommu.service.store.names() == ()


async def test_map_dma_errors_in_kernel_order(iommu: ServiceHarness) -> None:
    cid = await iommu.container()
    await iommu.map(cid, 2 * MIB, MIB)

    def req(iova: int, size: int, *, read: bool = True, segment: str = "ram") -> pb.MapDmaRequest:
        mapping = pb.DmaMapping(iova=iova, size=size, segment=segment, offset=iova, prot=pb.Prot(read=read))
        return pb.MapDmaRequest(container_id=cid, mapping=mapping)

    await iommu.fails("MapDma", req(2 * MIB, MIB, read=False), InvalidArgument, "BAD_PROT")
    await iommu.fails("MapDma", req(2 * MIB, 0), InvalidArgument, "ZERO_SIZE")
    # overlapping *and* misaligned: EINVAL wins, as in the kernel
    await iommu.fails("MapDma", req(2 * MIB, MIB + 1), InvalidArgument, "MISALIGNED")
    await iommu.fails("MapDma", req(2 * MIB, MIB, segment="other"), InvalidArgument, "UNKNOWN_SEGMENT")
    await iommu.fails("MapDma", req(15 * MIB, 2 * MIB), InvalidArgument, "OUTSIDE_SEGMENT")
    error = await iommu.fails("MapDma", req(2 * MIB + PAGE, PAGE), AlreadyExists, "OVERLAP")
    assert error.metadata["errno"] == "EEXIST"
    await iommu.fails("MapDma", pb.MapDmaRequest(container_id="x"), NotFound, "UNKNOWN_CONTAINER")


async def test_dma_entry_limit(iommu: ServiceHarness) -> None:
    cid = await iommu.container()
    for i in range(16):  # the fixture's dma_entry_limit
        await iommu.map(cid, i * PAGE, PAGE)
    assert (await iommu.call("GetInfo", pb.GetInfoRequest(container_id=cid))).dma_avail == 0
    error = await iommu.fails(
        "MapDma",
        pb.MapDmaRequest(
            container_id=cid,
            mapping=pb.DmaMapping(iova=MIB, size=PAGE, segment="ram", offset=MIB, prot=pb.Prot(read=True)),
        ),
        Exhausted,
        "DMA_ENTRY_LIMIT",
    )
    assert error.metadata["errno"] == "ENOSPC"


async def test_map_dma_batch_is_all_or_nothing(iommu: ServiceHarness) -> None:
    cid = await iommu.container()
    rw = pb.Prot(read=True, write=True)
    good = [pb.DmaMapping(iova=i * MIB, size=MIB, segment="ram", offset=i * MIB, prot=rw) for i in range(3)]
    clash = pb.DmaMapping(iova=MIB + PAGE, size=PAGE, segment="ram", offset=0, prot=rw)
    request = pb.MapDmaBatchRequest(container_id=cid, mappings=[*good, clash])
    error = await iommu.fails("MapDmaBatch", request, AlreadyExists, "OVERLAP")
    assert error.metadata["index"] == "3"
    assert (await iommu.info(cid)).statistics.mappings == 0
    reply = await iommu.call("MapDmaBatch", pb.MapDmaBatchRequest(container_id=cid, mappings=good))
    assert reply.mapped == 3
    stats = (await iommu.info(cid)).statistics
    assert (stats.mappings, stats.mapped_bytes, stats.maps_total) == (3, 3 * MIB, 3)


async def test_unmap_dma_bisect_empty_range_and_all(iommu: ServiceHarness) -> None:
    cid = await iommu.container()
    await iommu.map(cid, 0, 2 * MIB)
    await iommu.map(cid, 4 * MIB, MIB)
    error = await iommu.fails("UnmapDma", _range(cid, 0, MIB), InvalidArgument, "BISECT")
    assert error.metadata["errno"] == "EINVAL"
    assert (await iommu.info(cid)).statistics.mappings == 2  # nothing unmapped
    assert (await iommu.call("UnmapDma", _range(cid, 8 * MIB, MIB))).unmapped_bytes == 0
    await iommu.fails("UnmapDma", _range(cid, 0, PAGE - 1), InvalidArgument, "MISALIGNED")
    await iommu.fails("UnmapDma", pb.UnmapDmaRequest(container_id=cid), InvalidArgument, "NO_UNMAP_TARGET")
    everything = pb.UnmapDmaRequest(container_id=cid, all=pb.UnmapAll(), dirty_bitmap_pgsize=PAGE)
    await iommu.fails("UnmapDma", everything, InvalidArgument, "BAD_FLAGS")  # no bitmap with `all`
    everything.dirty_bitmap_pgsize = 0
    assert (await iommu.call("UnmapDma", everything)).unmapped_bytes == 3 * MIB
    assert (await iommu.info(cid)).statistics.unmaps_total == 2


async def test_pin_pages_checks(iommu: ServiceHarness) -> None:
    cid = await iommu.container()
    await iommu.map(cid, 0, 4 * MIB)
    await iommu.map(cid, 8 * MIB, MIB, prot="r")
    attach = pb.AttachDeviceRequest(container_id=cid, device="vgpu0")
    await iommu.call("AttachDevice", attach)
    await iommu.fails("AttachDevice", attach, AlreadyExists, "DEVICE_ATTACHED")

    def pin(iova: int, npage: int, device: str = "vgpu0") -> pb.PinPagesRequest:
        prot = pb.Prot(read=True, write=True)
        return pb.PinPagesRequest(container_id=cid, device=device, iova=iova, npage=npage, prot=prot)

    # no WatchUnmap registration yet: a device that cannot be notified may not pin
    await iommu.fails("PinPages", pin(0, 1), InvalidArgument, "NO_UNMAP_LISTENER")
    await iommu.fails("PinPages", pin(0, 1, device="nobody"), InvalidArgument, "DEVICE_NOT_ATTACHED")
    async with iommu.watch(cid, "vgpu0"):
        error = await iommu.fails("PinPages", pin(0, 513), TooBig, "TOO_MANY_PAGES")
        assert error.metadata["errno"] == "E2BIG"  # OUT_OF_RANGE on the wire
        await iommu.fails("PinPages", pin(0, 0), InvalidArgument, "ZERO_NPAGE")
        await iommu.fails("PinPages", pin(5 * MIB, 1), InvalidArgument, "NOT_MAPPED")
        await iommu.fails("PinPages", pin(8 * MIB, 1), PermissionDenied, "PROT_MISMATCH")
        assert len(await iommu.pin(cid, "vgpu0", 0, 512)) == 1
        unpin = pb.UnpinPagesRequest(container_id=cid, device="vgpu0", iova=0, npage=513)
        await iommu.fails("UnpinPages", unpin, TooBig, "TOO_MANY_PAGES")
        unpin.npage = 512
        assert (await iommu.call("UnpinPages", unpin)).released_pages == 512
        unpin.device = "nobody"
        await iommu.fails("UnpinPages", unpin, NotFound, "DEVICE_NOT_ATTACHED")


async def test_pins_are_charged_to_the_memlock_limit(iommu: ServiceHarness) -> None:
    iommu.segment("ram", MIB)
    request = pb.CreateContainerRequest(owner="vm", mode=pb.IOMMU_MODE_EMULATED, memlock_limit_bytes=2 * PAGE)
    cid = (await iommu.call("CreateContainer", request)).container_id
    await iommu.call("RegisterSegment", pb.RegisterSegmentRequest(container_id=cid, segment="ram", size=MIB))
    await iommu.map(cid, 0, MIB)
    await iommu.call("AttachDevice", pb.AttachDeviceRequest(container_id=cid, device="vgpu0"))
    async with iommu.watch(cid, "vgpu0"):
        await iommu.pin(cid, "vgpu0", 0, 2)
        pin = pb.PinPagesRequest(
            container_id=cid, device="vgpu0", iova=2 * PAGE, npage=1, prot=pb.Prot(read=True)
        )
        error = await iommu.fails("PinPages", pin, Exhausted, "MEMLOCK_EXCEEDED")
        assert error.metadata["errno"] == "ENOMEM"
        assert (await iommu.info(cid)).statistics.memlock_bytes == 2 * PAGE


async def test_pin_returns_coalesced_runs_into_the_segment(iommu: ServiceHarness) -> None:
    ram = iommu.segment("ram", 8 * MIB)
    for page in range(ram.size // PAGE):
        ram.buf[page * PAGE : page * PAGE + 8] = page.to_bytes(8, "little")
    cid = await iommu.container()
    # IOVA 0..2 MiB -> offsets 4..6 MiB; 2..3 MiB -> 6..7 MiB (contiguous); 3..4 MiB -> 1..2 MiB
    await iommu.map(cid, 0, 2 * MIB, 4 * MIB)
    await iommu.map(cid, 2 * MIB, MIB, 6 * MIB)
    await iommu.map(cid, 3 * MIB, MIB, MIB)
    await iommu.call("AttachDevice", pb.AttachDeviceRequest(container_id=cid, device="vgpu0"))
    async with iommu.watch(cid, "vgpu0"):
        first = 2 * MIB - 256 * PAGE  # 512 pages across the two contiguous mappings
        runs = await iommu.pin(cid, "vgpu0", first, 512)
        assert [(r.iova, r.segment, r.offset, r.length) for r in runs] == [
            (first, "ram", 4 * MIB + first, 512 * PAGE)
        ]
        runs = await iommu.pin(cid, "vgpu0", 3 * MIB - 2 * PAGE, 4)  # across a discontinuity
        assert [(r.iova, r.offset, r.length) for r in runs] == [
            (3 * MIB - 2 * PAGE, 7 * MIB - 2 * PAGE, 2 * PAGE),
            (3 * MIB, MIB, 2 * PAGE),
        ]
        for run in runs:  # the runs point at the bytes the guest sees at those IOVAs
            for i in range(run.length // PAGE):
                expected = (run.offset // PAGE + i).to_bytes(8, "little")
                assert bytes(ram.buf[run.offset + i * PAGE : run.offset + i * PAGE + 8]) == expected
                read = pb.DmaReadRequest(container_id=cid, device="vgpu0", iova=run.iova + i * PAGE, length=8)
                assert (await iommu.call("DmaRead", read)).data == expected
        stats = (await iommu.info(cid)).statistics
        assert (stats.pinned_pages, stats.pins_total) == (514, 516)  # 2 pages pinned twice


async def test_dma_read_write_through_the_segment(iommu: ServiceHarness) -> None:
    ram = iommu.segment("ram", 4 * MIB)
    cid = await iommu.container()
    await iommu.map(cid, 0x10000000, MIB, 2 * MIB)
    await iommu.map(cid, 0x10000000 + MIB, MIB, 0, prot="r")
    await iommu.call("AttachDevice", pb.AttachDeviceRequest(container_id=cid, device="vgpu0"))
    write = pb.DmaWriteRequest(container_id=cid, device="vgpu0", iova=0x10000000 + 100, data=b"doorbell")
    await iommu.call("DmaWrite", write)
    assert bytes(ram.buf[2 * MIB + 100 : 2 * MIB + 108]) == b"doorbell"
    ram.buf[2 * MIB + 200 : 2 * MIB + 204] = b"ring"
    read = pb.DmaReadRequest(container_id=cid, device="vgpu0", iova=0x10000000 + 200, length=4)
    assert (await iommu.call("DmaRead", read)).data == b"ring"
    read.length = 0
    await iommu.fails("DmaRead", read, InvalidArgument, "BAD_LENGTH")
    read.length, read.iova = 4, 0
    await iommu.fails("DmaRead", read, InvalidArgument, "DMA_FAULT")
    write.iova = 0x10000000 + MIB
    await iommu.fails("DmaWrite", write, PermissionDenied, "PROT_MISMATCH")
    read.iova, read.device = 0x10000000, "nobody"
    await iommu.fails("DmaRead", read, InvalidArgument, "DEVICE_NOT_ATTACHED")


async def test_dirty_bitmap(iommu: ServiceHarness) -> None:
    cid = await iommu.container()
    await iommu.map(cid, 0, 64 * PAGE)
    await iommu.call("AttachDevice", pb.AttachDeviceRequest(container_id=cid, device="vgpu0"))
    get = pb.GetDirtyBitmapRequest(container_id=cid, iova=0, size=64 * PAGE, pgsize=PAGE)
    await iommu.fails("GetDirtyBitmap", get, InvalidArgument, "DIRTY_TRACKING_OFF")
    await iommu.call("SetDirtyTracking", pb.SetDirtyTrackingRequest(container_id=cid, enabled=True))
    write = pb.DmaWriteRequest(container_id=cid, device="vgpu0", iova=PAGE + 8, data=b"x")
    await iommu.call("DmaWrite", write)
    async with iommu.watch(cid, "vgpu0"):
        await iommu.pin(cid, "vgpu0", 3 * PAGE, 1)
        bitmap = (await iommu.call("GetDirtyBitmap", get)).bitmap
        assert int.from_bytes(bitmap, "little") == 0b1010 and len(bitmap) == 8
        # reported: the written page is clean now, the pinned one stays dirty
        bitmap = (await iommu.call("GetDirtyBitmap", get)).bitmap
        assert int.from_bytes(bitmap, "little") == 0b1000
        get.pgsize = 8192
        await iommu.fails("GetDirtyBitmap", get, InvalidArgument, "BAD_PGSIZE")
        unpin = pb.UnpinPagesRequest(container_id=cid, device="vgpu0", iova=3 * PAGE, npage=1)
        await iommu.call("UnpinPages", unpin)
    await iommu.call("DmaWrite", write)
    reply = await iommu.call("UnmapDma", _range(cid, 0, 64 * PAGE, dirty_bitmap_pgsize=PAGE))
    # page 3 was re-marked at the last report, while still pinned
    assert (reply.unmapped_bytes, int.from_bytes(reply.dirty_bitmap, "little")) == (64 * PAGE, 0b1010)
    assert (await iommu.info(cid)).statistics.dirty_pages_reported_total == 5


async def test_hardware_mode_translate_and_faults(iommu: ServiceHarness) -> None:
    cid = await iommu.container(mode=pb.IOMMU_MODE_HARDWARE)
    await iommu.map(cid, MIB, MIB, 0, prot="r")
    await iommu.call("AttachDevice", pb.AttachDeviceRequest(container_id=cid, device="vgpu0"))
    translate = pb.TranslateRequest(container_id=cid, device="vgpu0", iova=MIB + PAGE, size=2 * PAGE)
    runs = (await iommu.call("Translate", translate)).runs
    assert [(r.iova, r.segment, r.offset, r.length) for r in runs] == [(MIB + PAGE, "ram", PAGE, 2 * PAGE)]
    translate.iova = 0
    await iommu.fails("Translate", translate, InvalidArgument, "DMA_FAULT")
    translate.iova, translate.write = MIB, True
    await iommu.fails("Translate", translate, PermissionDenied, "PROT_MISMATCH")
    faults = await iommu.call("ListFaults", pb.ListFaultsRequest(container_id=cid))
    assert faults.faults_total == 2
    assert [(f.iova, f.size, f.write, f.device, f.reason) for f in faults.faults] == [
        (0, 2 * PAGE, False, "vgpu0", "DMA_FAULT"),
        (MIB, 2 * PAGE, True, "vgpu0", "PROT_MISMATCH"),
    ]


async def test_detach_device_drops_its_pins(iommu: ServiceHarness) -> None:
    cid = await iommu.container()
    await iommu.map(cid, 0, MIB)
    await iommu.call("AttachDevice", pb.AttachDeviceRequest(container_id=cid, device="vgpu0"))
    detach = pb.DetachDeviceRequest(container_id=cid, device="vgpu0")
    async with iommu.watch(cid, "vgpu0") as watcher:
        await iommu.pin(cid, "vgpu0", 0, 8)
        assert (await iommu.call("DetachDevice", detach)).unpinned_pages == 8
        await watcher.wait_ended()  # the registration went with the device: the call ends (OK)
    await iommu.fails("DetachDevice", detach, NotFound, "DEVICE_NOT_ATTACHED")
    assert (await iommu.info(cid)).statistics.pinned_pages == 0
    await iommu.call("AttachDevice", pb.AttachDeviceRequest(container_id=cid, device="vgpu0"))
    async with iommu.watch(cid, "vgpu0"):  # attached again, it registers again
        await iommu.pin(cid, "vgpu0", 0, 1)


async def test_status_details_reach_a_plain_grpc_client(iommu: ServiceHarness) -> None:
    """Without the helper: the status code and the ErrorInfo trailer are on the wire."""
    request = pb.PinPagesRequest(container_id="nope", device="d", iova=0, npage=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await iommu.stub.PinPages(request, timeout=10)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    error = error_from_rpc_error(caught.value)
    assert (error.reason, error.metadata["container_id"]) == ("UNKNOWN_CONTAINER", "nope")


async def _scrape(url: str) -> str:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
        await writer.drain()
        head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    finally:
        writer.close()
        await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


async def test_metrics_are_exported(iommu: ServiceHarness) -> None:
    cid = await iommu.container()
    await iommu.container("vm1", mode=pb.IOMMU_MODE_HARDWARE, ram=None)
    await iommu.map(cid, 0, MIB)
    await iommu.call("AttachDevice", pb.AttachDeviceRequest(container_id=cid, device="vgpu0"))
    async with iommu.watch(cid, "vgpu0"):
        await iommu.pin(cid, "vgpu0", 0, 4)
        assert iommu.handle.metrics_url is not None
        text = await _scrape(iommu.handle.metrics_url)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    expected = {
        ("vgpusim_iommu_containers", (("mode", "emulated"),)): 1,
        ("vgpusim_iommu_containers", (("mode", "hardware"),)): 1,
        ("vgpusim_iommu_owners", ()): 2,
        ("vgpusim_iommu_devices", ()): 1,
        ("vgpusim_iommu_mappings", ()): 1,
        ("vgpusim_iommu_mapped_bytes", ()): MIB,
        ("vgpusim_iommu_pinned_pages", ()): 4,
        ("vgpusim_iommu_memlock_bytes", ()): 4 * PAGE,
        ("vgpusim_iommu_map_operations_total", (("op", "map"),)): 1,
        ("vgpusim_iommu_map_operations_total", (("op", "unmap"),)): 0,
        ("vgpusim_iommu_page_pins_total", ()): 4,
        ("vgpusim_iommu_page_unpins_total", ()): 0,
        ("vgpusim_iommu_unmap_notifications_total", ()): 0,
        ("vgpusim_iommu_unmap_retries_total", ()): 0,
        ("vgpusim_iommu_faults_total", ()): 0,
        ("vgpusim_iommu_dirty_pages_reported_total", ()): 0,
        ("vgpusim_iommu_containers_created_total", ()): 2,
        ("vgpusim_iommu_map_duration_seconds_count", (("op", "pin"),)): 1,
        ("vgpusim_iommu_map_duration_seconds_count", (("op", "map"),)): 1,
        ("vgpusim_iommu_map_duration_seconds_count", (("op", "map_batch"),)): 0,
        ("vgpusim_iommu_map_duration_seconds_bucket", (("le", "+Inf"), ("op", "pin"))): 1,
    }
    assert {key: samples.get(key) for key in expected} == expected
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="PinPages"' in text
