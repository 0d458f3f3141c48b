"""Container: segments, devices, MAP/UNMAP (kernel order, v2 rules, batches), info, destroy."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.iommu_type2.helpers import MIB, PAGE, RAM, RAM_SIZE, add_device, mapping
from vgpusim.common.errors import (
    AlreadyExists,
    Exhausted,
    InvalidArgument,
    NotFound,
    TimedOut,
    WrongState,
)
from vgpusim.iommu_type2.core import (
    IOVA_PGSIZES,
    PROT_NONE,
    PROT_READ,
    PROT_RW,
    Container,
    DmaMapping,
    Extension,
    InMemorySegmentStore,
    IommuMode,
    Mapper,
    MapperConfig,
)

# -- segments -----------------------------------------------------------------------------------


def test_segment_registration_errors(ctr: Container, store: InMemorySegmentStore) -> None:
    store.create("small", 2 * PAGE)
    cases: list[tuple[tuple[str, int], type[Exception], str]] = [
        (("bad name", PAGE), InvalidArgument, "BAD_NAME"),
        (("small", 0), InvalidArgument, "ZERO_SIZE"),
        (("small", PAGE + 1), InvalidArgument, "MISALIGNED"),
        ((RAM, PAGE), AlreadyExists, "SEGMENT_REGISTERED"),
        (("missing", PAGE), NotFound, "SEGMENT_MISSING"),
        (("small", 3 * PAGE), InvalidArgument, "SEGMENT_TOO_SMALL"),
    ]
    for args, cls, reason in cases:
        with pytest.raises(cls) as error:
            ctr.register_segment(*args)
        assert error.value.reason == reason  # type: ignore[attr-defined]
    ctr.register_segment("small", PAGE)  # a prefix of the file is fine
    assert ctr.info().segments == (RAM, "small")


def test_segment_in_use_cannot_be_unregistered(ctr: Container) -> None:
    ctr.map_dma(mapping(0, PAGE))
    with pytest.raises(WrongState) as error:
        ctr.unregister_segment(RAM)
    assert (error.value.reason, error.value.metadata["errno"]) == ("SEGMENT_IN_USE", "EBUSY")
    with pytest.raises(NotFound) as missing:
        ctr.unregister_segment("other")
    assert missing.value.reason == "UNKNOWN_SEGMENT"


async def test_segment_unregisters_once_unmapped(ctr: Container) -> None:
    ctr.map_dma(mapping(0, PAGE))
    await ctr.unmap_dma(0, PAGE)
    ctr.unregister_segment(RAM)
    with pytest.raises(InvalidArgument) as error:
        ctr.map_dma(mapping(0, PAGE))
    assert error.value.reason == "UNKNOWN_SEGMENT"


# -- devices ------------------------------------------------------------------------------------


def test_devices_are_unique_across_the_mapper(ctr: Container, hw: Container) -> None:
    ctr.attach_device("dev")
    for container in (ctr, hw):
        with pytest.raises(AlreadyExists) as error:
            container.attach_device("dev")
        assert error.value.reason == "DEVICE_ATTACHED"
        assert error.value.metadata["container_id"] == ctr.container_id
    assert ctr.detach_device("dev") == 0
    hw.attach_device("dev")
    with pytest.raises(NotFound) as missing:
        ctr.detach_device("dev")
    assert missing.value.reason == "DEVICE_NOT_ATTACHED"


def test_watch_needs_attach_and_is_exclusive(ctr: Container) -> None:
    listener = add_device(ctr, "dev")
    with pytest.raises(AlreadyExists) as error:
        ctr.watch_unmap("dev", listener)
    assert error.value.reason == "ALREADY_WATCHING"
    with pytest.raises(NotFound) as missing:
        ctr.watch_unmap("other", listener)
    assert missing.value.reason == "DEVICE_NOT_ATTACHED"


# -- MAP_DMA ------------------------------------------------------------------------------------


def test_map_state_checks_follow_the_argument_checks(mapper: Mapper) -> None:
    mapper.config = MapperConfig(dma_entry_limit=2)
    container = mapper.create_container("vm", IommuMode.HARDWARE, memlock_limit_bytes=3 * PAGE)
    container.register_segment(RAM, RAM_SIZE)
    container.map_dma(mapping(MIB, PAGE))
    # misaligned AND overlapping: EINVAL, not EEXIST
    with pytest.raises(InvalidArgument) as misaligned:
        container.map_dma(mapping(MIB, PAGE + 1))
    assert misaligned.value.reason == "MISALIGNED"
    # outside the segment AND overlapping: EINVAL
    with pytest.raises(InvalidArgument) as outside:
        container.map_dma(mapping(MIB, PAGE, offset=RAM_SIZE))
    assert outside.value.reason == "OUTSIDE_SEGMENT"
    container.map_dma(mapping(2 * MIB, PAGE))  # 2 entries: the limit
    # overlapping AND over the entry limit AND over memlock: EEXIST
    with pytest.raises(AlreadyExists) as overlap:
        container.map_dma(mapping(MIB - PAGE, 4 * PAGE))
    assert (overlap.value.reason, overlap.value.metadata["errno"]) == ("OVERLAP", "EEXIST")
    # over the entry limit AND over memlock: ENOSPC
    with pytest.raises(Exhausted) as full:
        container.map_dma(mapping(3 * MIB, 8 * PAGE))
    assert (full.value.reason, full.value.metadata["errno"]) == ("DMA_ENTRY_LIMIT", "ENOSPC")
    assert container.get_info().dma_avail == 0


def test_hardware_mode_charges_memlock_at_map_time(hw: Container, mapper: Mapper) -> None:
    container = mapper.create_container("vm", IommuMode.HARDWARE, memlock_limit_bytes=4 * PAGE)
    container.register_segment(RAM, RAM_SIZE)
    container.map_dma(mapping(0, 3 * PAGE))
    assert container.statistics().memlock_bytes == 3 * PAGE
    with pytest.raises(Exhausted) as error:
        container.map_dma(mapping(MIB, 2 * PAGE))
    assert (error.value.reason, error.value.metadata["errno"]) == ("MEMLOCK_EXCEEDED", "ENOMEM")
    assert len(container.mappings()) == 1


async def test_hardware_memlock_is_returned_by_unmap(mapper: Mapper) -> None:
    container = mapper.create_container("vm", IommuMode.HARDWARE, memlock_limit_bytes=4 * PAGE)
    container.register_segment(RAM, RAM_SIZE)
    container.map_dma(mapping(0, 4 * PAGE))
    await container.unmap_dma(0, 4 * PAGE)
    assert container.statistics().memlock_bytes == 0
    container.map_dma(mapping(MIB, 4 * PAGE))


def test_emulated_mode_charges_nothing_at_map_time(mapper: Mapper) -> None:
    container = mapper.create_container("vm", IommuMode.EMULATED, memlock_limit_bytes=PAGE)
    container.register_segment(RAM, RAM_SIZE)
    container.map_dma(mapping(0, 8 * MIB))
    assert container.statistics().memlock_bytes == 0


def test_adjacent_and_aliased_mappings_are_fine(ctr: Container) -> None:
    ctr.map_dma(mapping(0, PAGE))
    ctr.map_dma(mapping(PAGE, PAGE))
    ctr.map_dma(mapping(MIB, PAGE, offset=0))  # two IOVAs for one segment page, as type1 allows
    ctr.map_dma(DmaMapping((1 << 64) - PAGE, PAGE, RAM, 0, PROT_READ))
    assert [m.iova for m in ctr.mappings()] == [0, PAGE, MIB, (1 << 64) - PAGE]


def test_batch_is_all_or_nothing_and_names_the_index(ctr: Container) -> None:
    ctr.map_dma(mapping(8 * MIB, PAGE))
    batch = [mapping(0, PAGE), mapping(PAGE, PAGE), mapping(8 * MIB, PAGE), mapping(2 * PAGE, PAGE)]
    with pytest.raises(AlreadyExists) as error:
        ctr.map_dma_batch(batch)
    assert error.value.reason == "OVERLAP"
    assert error.value.metadata["index"] == "2"
    assert len(ctr.mappings()) == 1
    assert ctr.statistics().maps_total == 1
    # an overlap *inside* the batch is found too
    with pytest.raises(AlreadyExists) as inner:
        ctr.map_dma_batch([mapping(0, 2 * PAGE), mapping(PAGE, PAGE)])
    assert inner.value.metadata["index"] == "1"
    assert ctr.map_dma_batch([mapping(i * PAGE, PAGE) for i in range(100)]) == 100
    assert ctr.map_dma_batch([]) == 0
    assert ctr.statistics().maps_total == 101


def test_batch_respects_the_entry_limit(mapper: Mapper) -> None:
    mapper.config = MapperConfig(dma_entry_limit=3)
    container = mapper.create_container("vm", IommuMode.EMULATED)
    container.register_segment(RAM, RAM_SIZE)
    with pytest.raises(Exhausted) as error:
        container.map_dma_batch([mapping(i * PAGE, PAGE) for i in range(4)])
    assert (error.value.reason, error.value.metadata["index"]) == ("DMA_ENTRY_LIMIT", "3")
    assert container.get_info().dma_avail == 3


def test_default_entry_limit_is_65535(ctr: Container) -> None:
    assert ctr.get_info().dma_avail == 65535
    assert ctr.map_dma_batch([mapping(i * PAGE, PAGE, offset=0) for i in range(65535)]) == 65535
    with pytest.raises(Exhausted) as error:
        ctr.map_dma(mapping(MIB * 1024, PAGE, offset=0))
    assert error.value.reason == "DMA_ENTRY_LIMIT"


# -- UNMAP_DMA ----------------------------------------------------------------------------------


async def test_unmap_covers_whole_mappings(ctr: Container) -> None:
    ctr.map_dma_batch([mapping(0, 2 * PAGE), mapping(2 * PAGE, 2 * PAGE), mapping(MIB, PAGE)])
    for iova, size in ((PAGE, 3 * PAGE), (0, PAGE), (0, 3 * PAGE), (3 * PAGE, 4 * PAGE)):
        with pytest.raises(InvalidArgument) as error:
            await ctr.unmap_dma(iova, size)
        assert error.value.reason == "BISECT"
    assert len(ctr.mappings()) == 3  # nothing unmapped
    assert (await ctr.unmap_dma(4 * PAGE, PAGE)).unmapped_bytes == 0  # a hole: success, 0
    assert (await ctr.unmap_dma(0, 2 * MIB)).unmapped_bytes == 4 * PAGE + PAGE  # several at once
    assert ctr.mappings() == ()


async def test_unmap_all(ctr: Container) -> None:
    ctr.map_dma_batch([mapping(0, PAGE), mapping(MIB, 2 * PAGE)])
    ctr.map_dma(DmaMapping((1 << 64) - PAGE, PAGE, RAM, 0, PROT_RW))
    result = await ctr.unmap_all()
    assert (result.unmapped_bytes, result.dirty_bitmap) == (4 * PAGE, None)
    assert ctr.statistics().unmaps_total == 3
    assert ctr.get_info().dma_avail == 65535


async def test_unmap_state_checks(ctr: Container) -> None:
    ctr.map_dma(mapping(0, 2 * PAGE))
    # dirty bitmap asked while tracking is off (and bisecting): tracking is checked first
    with pytest.raises(InvalidArgument) as off:
        await ctr.unmap_dma(0, PAGE, dirty_pgsize=PAGE)
    assert off.value.reason == "DIRTY_TRACKING_OFF"
    ctr.set_dirty_tracking(True)
    with pytest.raises(InvalidArgument) as pgsize:
        await ctr.unmap_dma(0, 2 * MIB, dirty_pgsize=2 * PAGE)
    assert pgsize.value.reason == "BAD_PGSIZE"
    with pytest.raises(InvalidArgument) as bisect:
        await ctr.unmap_dma(0, PAGE, dirty_pgsize=PAGE)
    assert bisect.value.reason == "BISECT"


# -- GET_INFO / CHECK_EXTENSION ------------------------------------------------------------------


def test_info(ctr: Container, hw: Container) -> None:
    ctr.map_dma(mapping(0, PAGE))
    info = ctr.get_info()
    assert info.iova_pgsizes == IOVA_PGSIZES == 0xFFFFFFFFFFFFF000
    assert (info.dma_avail, info.migration_pgsize_bitmap, info.max_dirty_bitmap_size) == (
        65534,
        4096,
        268435456,
    )
    assert (info.mode, hw.get_info().mode) == (IommuMode.EMULATED, IommuMode.HARDWARE)


def test_extensions(ctr: Container) -> None:
    yes = {Extension.TYPE1, Extension.TYPE1V2, Extension.UNMAP_ALL, Extension.UPDATE_VADDR}
    for extension in Extension:
        assert ctr.check_extension(extension) is (extension in yes)
    assert ctr.check_extension(0) is False
    assert ctr.check_extension(77) is False
    ctr.attach_device("mdev")
    assert ctr.check_extension(10) is False  # UPDATE_VADDR: never with an emulated device
    assert ctr.check_extension(1) and ctr.check_extension(3) and ctr.check_extension(9)


# -- destroy ------------------------------------------------------------------------------------


async def test_destroy_with_pins_releases_everything(mapper: Mapper) -> None:
    container = mapper.create_container("vm", IommuMode.EMULATED, memlock_limit_bytes=MIB)
    container.register_segment(RAM, RAM_SIZE)
    container.map_dma_batch([mapping(0, MIB), mapping(MIB, MIB)])
    listener = add_device(container, "dev")
    container.pin_pages("dev", 0, 16, PROT_RW)
    container.pin_pages("dev", MIB, 8, PROT_READ)
    assert await container.destroy() == 2 * MIB
    assert listener.calls == [(0, MIB + MIB)]
    stats = container.statistics()
    assert (stats.mappings, stats.pinned_pages, stats.memlock_bytes) == (0, 0, 0)
    assert mapper.device_container("dev") is None
    with pytest.raises(NotFound) as error:
        container.map_dma(mapping(0, PAGE))
    assert error.value.reason == "UNKNOWN_CONTAINER"


async def test_destroy_without_force_keeps_the_container_when_a_device_misbehaves(ctr: Container) -> None:
    ctr.map_dma(mapping(0, MIB))
    add_device(ctr, "stubborn", ignore_calls=None)
    ctr.pin_pages("stubborn", 0, 1, PROT_RW)
    with pytest.raises(WrongState):
        await ctr.destroy()
    assert len(ctr.mappings()) == 1
    assert await ctr.destroy(force=True) == MIB
    assert ctr.statistics().pinned_pages == 0


async def test_forced_destroy_survives_a_hung_device(ctr: Container) -> None:
    ctr.map_dma(mapping(0, MIB))
    add_device(ctr, "hung", hang=True)
    ctr.pin_pages("hung", 0, 4, PROT_RW)
    with pytest.raises(TimedOut):
        await ctr.destroy()
    assert await ctr.destroy(force=True) == MIB
    assert ctr.devices == ()


# -- property: MAP/UNMAP against a model ----------------------------------------------------------

_slots = st.integers(min_value=0, max_value=15)
_ops = st.lists(
    st.tuples(st.sampled_from(["map", "unmap", "all"]), _slots, st.integers(min_value=1, max_value=4)),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
async def test_map_unmap_match_a_model(mapper: Mapper, ops: list[tuple[str, int, int]]) -> None:
    container = mapper.create_container("prop", IommuMode.EMULATED)
    container.register_segment(RAM, RAM_SIZE)
    model: dict[int, int] = {}  # start page -> npages
    for op, first, count in ops:
        lo, hi = first, first + count
        touching = {s: n for s, n in model.items() if s < hi and lo < s + n}
        if op == "map":
            if touching:
                with pytest.raises(AlreadyExists):
                    container.map_dma(mapping(lo * PAGE, count * PAGE))
            else:
                container.map_dma(mapping(lo * PAGE, count * PAGE))
                model[lo] = count
        elif op == "unmap":
            if any(s < lo or s + n > hi for s, n in touching.items()):
                with pytest.raises(InvalidArgument):
                    await container.unmap_dma(lo * PAGE, count * PAGE)
            else:
                result = await container.unmap_dma(lo * PAGE, count * PAGE)
                assert result.unmapped_bytes == sum(touching.values()) * PAGE
                for start in touching:
                    del model[start]
        else:
            assert (await container.unmap_all()).unmapped_bytes == sum(model.values()) * PAGE
            model.clear()
        assert [(m.iova // PAGE, m.size // PAGE) for m in container.mappings()] == sorted(model.items())
        assert container.statistics().mapped_bytes == sum(model.values()) * PAGE
    await mapper.destroy_container(container.container_id)


def test_prot_none_is_refused(ctr: Container) -> None:
    with pytest.raises(InvalidArgument) as error:
        ctr.map_dma(mapping(0, PAGE, prot=PROT_NONE))
    assert error.value.reason == "BAD_PROT"
