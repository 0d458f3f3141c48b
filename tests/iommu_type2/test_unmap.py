"""The unmap handshake: notify pinning devices, re-check, bounded retries, deadlines, prevent-access."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.iommu_type2.helpers import MIB, PAGE, add_device, mapping
from vgpusim.common.errors import Busy, NotFound, TimedOut, WrongState
from vgpusim.iommu_type2.core import PROT_RW, Container, IommuMode, Mapper, MapperConfig


@pytest.fixture
def pinned(ctr: Container) -> Container:
    """``ctr`` with two 1 MiB mappings at 0 and 1 MiB."""
    ctr.map_dma_batch([mapping(0, MIB), mapping(MIB, MIB)])
    return ctr


async def test_no_pins_no_notification(pinned: Container) -> None:
    listener = add_device(pinned)
    assert (await pinned.unmap_dma(0, 2 * MIB)).unmapped_bytes == 2 * MIB
    assert listener.calls == []
    assert pinned.statistics().notifications_total == 0


async def test_device_that_unpins(pinned: Container) -> None:
    listener = add_device(pinned)
    pinned.pin_pages("vgpu0", MIB + 4 * PAGE, 3, PROT_RW)
    pinned.pin_pages("vgpu0", MIB + 4 * PAGE, 1, PROT_RW)  # refcount 2 on one page
    assert (await pinned.unmap_dma(0, 2 * MIB)).unmapped_bytes == 2 * MIB
    assert listener.calls == [(MIB, MIB)]  # the span of the pinned mappings
    stats = pinned.statistics()
    assert (stats.pinned_pages, stats.notifications_total, stats.retries_total) == (0, 1, 0)


async def test_device_that_unpins_on_the_second_call(pinned: Container) -> None:
    listener = add_device(pinned, ignore_calls=1)
    pinned.pin_pages("vgpu0", 0, 2, PROT_RW)
    assert (await pinned.unmap_all()).unmapped_bytes == 2 * MIB
    assert len(listener.calls) == 2
    assert pinned.statistics().retries_total == 1


async def test_device_that_never_unpins_fails_after_the_retries(pinned: Container) -> None:
    listener = add_device(pinned, "stubborn", ignore_calls=None)
    polite = add_device(pinned, "polite")
    pinned.pin_pages("stubborn", 0, 2, PROT_RW)
    pinned.pin_pages("stubborn", 8 * PAGE, 1, PROT_RW)
    pinned.pin_pages("polite", 16 * PAGE, 1, PROT_RW)
    with pytest.raises(WrongState) as error:
        await pinned.unmap_dma(0, 2 * MIB)
    assert error.value.reason == "UNMAP_PINS_OUTSTANDING"
    assert error.value.metadata["errno"] == "EDEADLOCK"  # EDEADLK, as iommufd
    assert error.value.metadata["devices"] == "stubborn"
    assert error.value.metadata["pages"] == "stubborn:0x0/2,0x8000/1"
    assert "stubborn" in error.value.message and "0x8000/1" in error.value.message
    assert len(listener.calls) == 11  # the first call and 10 retries, as type1
    assert len(polite.calls) == 11  # every registered device is notified every round
    assert len(pinned.mappings()) == 2  # nothing unmapped
    assert pinned.pinned_runs("stubborn") == ((0, 2), (8 * PAGE, 1))
    pinned.pin_pages("polite", 0, 1, PROT_RW)  # the range is open to pins again


async def test_retry_count_is_configurable(mapper: Mapper) -> None:
    mapper.config = MapperConfig(unmap_retries=2, notify_timeout_s=0.2)
    container = mapper.create_container("vm", IommuMode.EMULATED)
    container.register_segment("ram", MIB)
    container.map_dma(mapping(0, MIB))
    listener = add_device(container, ignore_calls=None)
    container.pin_pages("vgpu0", 0, 1, PROT_RW)
    with pytest.raises(WrongState) as error:
        await container.unmap_all()
    assert error.value.metadata["rounds"] == "3"
    assert len(listener.calls) == 3


async def test_progress_on_the_lowest_pinned_mapping_resets_the_retries(mapper: Mapper) -> None:
    """type1's ``dma_last``: a device unpinning one mapping per call still finishes."""
    mapper.config = MapperConfig(unmap_retries=0, notify_timeout_s=0.2)
    container = mapper.create_container("vm", IommuMode.EMULATED)
    container.register_segment("ram", 4 * MIB)
    container.map_dma_batch([mapping(i * MIB, MIB) for i in range(4)])
    container.attach_device("slow")

    class OneAtATime:
        calls = 0

        async def notify_unmap(self, iova: int, size: int) -> None:
            self.calls += 1
            first = container.pinned_runs("slow", iova, size)[0]
            container.unpin_pages("slow", first[0], first[1])

    listener = OneAtATime()
    container.watch_unmap("slow", listener)
    for i in range(4):
        container.pin_pages("slow", i * MIB, 1, PROT_RW)
    assert (await container.unmap_all()).unmapped_bytes == 4 * MIB
    assert listener.calls == 4


async def test_device_that_hangs_times_out(pinned: Container) -> None:
    add_device(pinned, "hung", hang=True)
    polite = add_device(pinned, "polite")
    pinned.pin_pages("hung", 0, 1, PROT_RW)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimedOut) as error:
        await pinned.unmap_dma(0, MIB)
    assert loop.time() - started < 2  # one deadline (0.2 s), not one per device or per retry
    assert (error.value.reason, error.value.metadata["devices"]) == ("UNMAP_NOTIFY_TIMEOUT", "hung")
    assert error.value.metadata["errno"] == "ETIMEDOUT"
    assert "hung" in error.value.message
    assert len(polite.calls) == 1
    assert len(pinned.mappings()) == 2
    pinned.pin_pages("polite", 0, 1, PROT_RW)  # no mark left behind


async def test_devices_are_notified_concurrently(pinned: Container) -> None:
    both = asyncio.Barrier(2)

    class Meeting:
        def __init__(self, device: str) -> None:
            self.device = device

        async def notify_unmap(self, iova: int, size: int) -> None:
            await both.wait()  # returns only if the other device is being notified at the same time
            for start, count in pinned.pinned_runs(self.device, iova, size):
                pinned.unpin_pages(self.device, start, count)

    for device in ("a", "b"):
        pinned.attach_device(device)
        pinned.watch_unmap(device, Meeting(device))
        pinned.pin_pages(device, 0, 1, PROT_RW)
    assert (await pinned.unmap_dma(0, MIB)).unmapped_bytes == MIB


async def test_new_pins_into_the_range_are_refused_while_notifying(pinned: Container) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    class Slow:
        async def notify_unmap(self, iova: int, size: int) -> None:
            entered.set()
            await release.wait()
            for start, count in pinned.pinned_runs("slow", iova, size):
                pinned.unpin_pages("slow", start, count)

    pinned.attach_device("slow")
    pinned.watch_unmap("slow", Slow())
    pinned.pin_pages("slow", 0, 1, PROT_RW)
    unmap = asyncio.create_task(pinned.unmap_dma(0, MIB))
    await entered.wait()
    with pytest.raises(Busy) as error:
        pinned.pin_pages("slow", 4 * PAGE, 1, PROT_RW)
    assert (error.value.reason, error.value.metadata["errno"]) == ("UNMAP_IN_PROGRESS", "EBUSY")
    # a pin that starts outside and runs into the range is refused too, and unwound
    with pytest.raises(Busy):
        pinned.pin_pages("slow", MIB - PAGE, 2, PROT_RW)
    pinned.pin_pages("slow", MIB, 1, PROT_RW)  # outside the range: fine
    assert pinned.dma_read("slow", 0, 4) == bytes(4)  # DMA still works until the unmap is done
    release.set()
    assert (await unmap).unmapped_bytes == MIB
    assert pinned.pinned_runs("slow") == ((MIB, 1),)


async def test_a_failing_listener_is_logged_and_rechecked(
    pinned: Container, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        async def notify_unmap(self, iova: int, size: int) -> None:
            raise ConnectionResetError("stream gone")

    pinned.attach_device("broken")
    pinned.watch_unmap("broken", Broken())
    add_device(pinned, "polite")
    pinned.pin_pages("polite", 0, 1, PROT_RW)
    with caplog.at_level(logging.WARNING):
        assert (await pinned.unmap_dma(0, MIB)).unmapped_bytes == MIB
    assert "broken" in caplog.text


async def test_unwatch_drops_the_pins_of_a_device_that_can_no_longer_be_notified(pinned: Container) -> None:
    add_device(pinned)
    pinned.pin_pages("vgpu0", 0, 5, PROT_RW)
    assert pinned.unwatch_unmap("vgpu0") == 5
    assert pinned.statistics().pinned_pages == 0
    assert (await pinned.unmap_all()).unmapped_bytes == 2 * MIB


async def test_container_destroyed_during_the_handshake(mapper: Mapper, pinned: Container) -> None:
    """An unmap waiting on a device finds the container gone when the device answers."""
    release = asyncio.Event()

    class FirstCallWaits:
        calls = 0

        async def notify_unmap(self, iova: int, size: int) -> None:
            self.calls += 1
            if self.calls == 1:
                await release.wait()  # the unmap below waits here...
            for start, count in pinned.pinned_runs("dev", iova, size):
                pinned.unpin_pages("dev", start, count)

    pinned.attach_device("dev")
    pinned.watch_unmap("dev", FirstCallWaits())
    pinned.pin_pages("dev", 0, 1, PROT_RW)
    unmap = asyncio.create_task(pinned.unmap_dma(0, MIB))
    await asyncio.sleep(0.01)
    assert await mapper.destroy_owner(pinned.owner) == 2 * MIB  # ...while the owner goes away
    release.set()
    with pytest.raises(NotFound) as error:
        await unmap
    assert error.value.reason == "UNKNOWN_CONTAINER"
    assert mapper.containers() == ()


async def test_concurrent_unmaps_of_one_range(pinned: Container) -> None:
    release = asyncio.Event()

    class Slow:
        async def notify_unmap(self, iova: int, size: int) -> None:
            await release.wait()
            for start, count in pinned.pinned_runs("slow", iova, size):
                pinned.unpin_pages("slow", start, count)

    pinned.attach_device("slow")
    pinned.watch_unmap("slow", Slow())
    pinned.pin_pages("slow", 0, 1, PROT_RW)
    first = asyncio.create_task(pinned.unmap_dma(0, MIB))
    second = asyncio.create_task(pinned.unmap_dma(0, MIB))
    await asyncio.sleep(0.01)
    release.set()
    results = sorted(r.unmapped_bytes for r in await asyncio.gather(first, second))
    assert results == [0, MIB]  # the mapping is removed once
    assert [m.iova for m in pinned.mappings()] == [MIB]
    pinned.pin_pages("slow", MIB, 1, PROT_RW)
