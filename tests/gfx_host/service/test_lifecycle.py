"""HostService vendor ops and the open/release life cycle, as the bus and the frontend see them.

The bus side is :class:`HostService` called directly (``create``, ``open_device``...); the
frontend side is the broker socket and the channel it hands over; iommu_type2 is the fake, whose
recorded calls show what gfx_host asked of the container.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tests.gfx_host.service.conftest import GVT, NV, RAM, T4, T8, U1, U2, Dirs, OpenVgpu
from tests.gfx_host.service.fake_iommu import FakeIommu
from tests.gfx_host.service.guest import HWS_IOVA, RING_IOVA, connect
from vgpusim.common.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable, WrongState
from vgpusim.common.shm.errors import PeerGone
from vgpusim.gfx_host import broker as broker_module
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.vgpu import VgpuState
from vgpusim.gfx_host.host import HostService
from vgpusim.iommu_type2.core import Container, IommuMode

# ---- vendor ops ------------------------------------------------------------------------------


def test_available_instances_follow_creation_and_removal(service: HostService) -> None:
    before = {t: service.available(GVT, f"i915-GVTg_V5_{t}") for t in (8, 4, 2, 1)}

    vgpu = service.create(U1, GVT, T4)
    during = {t: service.available(GVT, f"i915-GVTg_V5_{t}") for t in (8, 4, 2, 1)}
    service.remove(U1)
    after = {t: service.available(GVT, f"i915-GVTg_V5_{t}") for t in (8, 4, 2, 1)}

    assert (vgpu.uuid, vgpu.parent, vgpu.vgpu_type.type_id) == (U1, GVT, T4)
    assert before == {8: 7, 4: 5, 2: 2, 1: 1}
    assert during == {8: 5, 4: 4, 2: 2, 1: 1}
    assert after == before


def test_create_errors(service: HostService) -> None:
    service.create(U1, GVT, T4)

    with pytest.raises(AlreadyExists) as again:
        service.create(U1, GVT, T8)
    with pytest.raises(InvalidArgument) as bad_type:
        service.create(U2, GVT, "i915-GVTg_V9_9")
    with pytest.raises(NotFound) as bad_parent:
        service.create(U2, "0000:00:09.0", T4)

    assert again.value.reason == "UUID_IN_USE"
    assert bad_type.value.reason == "UNKNOWN_TYPE"
    assert bad_parent.value.reason == "PARENT_NOT_FOUND"


def test_remove_unknown_vgpu(service: HostService) -> None:
    with pytest.raises(NotFound):
        service.remove(U1)


# ---- open ------------------------------------------------------------------------------------


async def test_open_attaches_watches_and_returns_a_token(
    service: HostService, container: Container, fake: FakeIommu
) -> None:
    service.create(U1, GVT, T4)

    token = await service.open_device(U1, container.container_id)

    assert len(token) == 32 and int(token, 16) >= 0
    assert [c.rpc for c in fake.calls] == ["AttachDevice", "WatchUnmap"]
    assert container.devices == (U1,)
    vgpu = service.host.find_vgpu(U1)
    assert (vgpu.state, vgpu.container) == (VgpuState.OPEN, container.container_id)


async def test_the_token_hands_over_the_channel(
    service: HostService, container: Container, dirs: Dirs
) -> None:
    service.create(U1, GVT, T4)
    token = await service.open_device(U1, container.container_id)

    port = await asyncio.to_thread(connect, service.broker.path, token, dirs.shm)
    try:
        magic = await asyncio.to_thread(port.read, 0, r.PV_MAGIC_LO, 8)
        assert port.end.name == f"chan-{U1}"
        assert magic == r.PVINFO_MAGIC_VALUE
    finally:
        port.close()


async def test_a_wrong_token_is_refused_and_the_right_one_still_works(
    service: HostService, container: Container, dirs: Dirs
) -> None:
    service.create(U1, GVT, T4)
    token = await service.open_device(U1, container.container_id)

    with pytest.raises(PeerGone):
        await asyncio.to_thread(connect, service.broker.path, "0" * 32, dirs.shm)
    port = await asyncio.to_thread(connect, service.broker.path, token, dirs.shm)
    port.close()


async def test_a_token_works_once(opened: OpenVgpu, service: HostService, dirs: Dirs) -> None:
    with pytest.raises(PeerGone):
        await asyncio.to_thread(connect, service.broker.path, opened.token, dirs.shm)


async def test_open_twice_is_unavailable(
    opened: OpenVgpu, service: HostService, container: Container
) -> None:
    with pytest.raises(Unavailable) as exc:
        await service.open_device(U1, container.container_id)

    assert exc.value.reason == "VGPU_OPEN"


async def test_a_failed_open_leaves_nothing_behind(
    service: HostService, container: Container, fake: FakeIommu, dirs: Dirs
) -> None:
    service.create(U1, GVT, T4)
    other = fake.mapper.create_container("vm1", IommuMode.EMULATED)
    other.attach_device(U1)  # the mdev is attached to another VM's container

    with pytest.raises(AlreadyExists):
        await service.open_device(U1, container.container_id)
    with pytest.raises(NotFound):
        await service.open_device(U1, "no-such-container")

    assert service.host.find_vgpu(U1).state is VgpuState.CREATED
    assert U1 not in service.open
    assert sorted(os.listdir(dirs.shm)) == [RAM]  # no channel segment left
    other.detach_device(U1)
    token = await service.open_device(U1, container.container_id)
    assert token


async def test_a_failed_watch_registration_detaches_again(
    service: HostService, container: Container, fake: FakeIommu
) -> None:
    service.create(U1, GVT, T4)
    container.attach_device(U2)  # an unrelated device, to show only U1 is detached

    fake.refuse_watch = AlreadyExists("device already watching", reason="ALREADY_WATCHING")

    with pytest.raises(AlreadyExists) as exc:
        await service.open_device(U1, container.container_id)

    assert exc.value.reason == "ALREADY_WATCHING"
    assert [c.rpc for c in fake.calls] == ["AttachDevice", "DetachDevice"]
    assert container.devices == (U2,)
    assert service.host.find_vgpu(U1).state is VgpuState.CREATED


# ---- release ---------------------------------------------------------------------------------


async def test_release_unpins_everything_and_detaches(
    opened: OpenVgpu, service: HostService, container: Container, fake: FakeIommu, dirs: Dirs
) -> None:
    guest = opened.guest
    await asyncio.to_thread(guest.bring_up)
    await asyncio.to_thread(guest.submit, b"\0" * 8)  # a doorbell: the GTT entries get pinned
    await asyncio.to_thread(guest.ring_reg, r.RING_HEAD)
    assert container.statistics().pinned_pages == 3

    await service.release(U1)

    unpinned = sorted(c.iova for c in fake.of("UnpinPages", U1))
    assert unpinned == sorted(c.iova for c in fake.of("PinPages", U1))
    assert container.statistics().pinned_pages == 0
    assert fake.calls[-1].rpc == "DetachDevice"
    assert container.devices == ()
    assert service.host.find_vgpu(U1).state is VgpuState.CREATED
    assert sorted(os.listdir(dirs.shm)) == [RAM]
    assert RING_IOVA in unpinned and HWS_IOVA in unpinned


async def test_release_is_prompt_while_the_frontend_is_attached(
    opened: OpenVgpu, service: HostService
) -> None:
    await asyncio.to_thread(opened.guest.probe)
    started = time.monotonic()

    await service.release(U1)

    assert time.monotonic() - started < 2.0  # the trap thread does not sit out a join timeout


async def test_after_release_the_frontend_sees_the_channel_gone(
    opened: OpenVgpu, service: HostService
) -> None:
    await service.release(U1)

    with pytest.raises(PeerGone):
        await asyncio.to_thread(opened.port.read, 0, r.SCRATCH, 4)


async def test_release_errors(service: HostService) -> None:
    service.create(U1, GVT, T4)

    with pytest.raises(WrongState) as closed:
        await service.release(U1)
    with pytest.raises(NotFound):
        await service.release(U2)

    assert closed.value.reason == "NOT_OPEN"


async def test_remove_while_open_is_refused(opened: OpenVgpu, service: HostService) -> None:
    with pytest.raises(WrongState) as exc:
        service.remove(U1)

    assert exc.value.reason == "VGPU_OPEN"
    assert service.host.find_vgpu(U1).state is VgpuState.OPEN


async def test_reopen_after_release(
    opened: OpenVgpu, service: HostService, container: Container, dirs: Dirs
) -> None:
    await service.release(U1)

    token = await service.open_device(U1, container.container_id)
    port = await asyncio.to_thread(connect, service.broker.path, token, dirs.shm)
    try:
        assert await asyncio.to_thread(port.read, 0, r.PV_MAGIC_LO, 8) == r.PVINFO_MAGIC_VALUE
    finally:
        port.close()


async def test_stop_releases_what_is_open(
    service: HostService, container: Container, fake: FakeIommu, dirs: Dirs
) -> None:
    service.create(U1, GVT, T4)
    service.create(U2, NV, "nvidia-A10-4Q")
    await service.open_device(U1, container.container_id)
    other = fake.mapper.create_container("vm1", IommuMode.EMULATED)
    await service.open_device(U2, other.container_id)

    await service.stop()

    assert sorted(c.device for c in fake.of("DetachDevice")) == [U1, U2]
    assert service.open == {}
    assert sorted(os.listdir(dirs.shm)) == [RAM]


async def test_the_uuid_may_be_given_in_upper_case(
    service: HostService, container: Container, fake: FakeIommu
) -> None:
    service.create(U1.upper(), GVT, T4)

    await service.open_device(U1.upper(), container.container_id)
    with pytest.raises(Unavailable):
        await service.open_device(U1, container.container_id)
    await service.release(U1)

    assert service.host.find_vgpu(U1).state is VgpuState.CREATED
    assert [c.device for c in fake.of("AttachDevice")] == [U1]


async def test_concurrent_opens_of_one_vgpu(service: HostService, container: Container) -> None:
    service.create(U1, GVT, T4)

    results = await asyncio.gather(
        service.open_device(U1, container.container_id),
        service.open_device(U1, container.container_id),
        return_exceptions=True,
    )

    tokens = [t for t in results if isinstance(t, str)]
    errors = [e for e in results if isinstance(e, BaseException)]
    assert len(tokens) == 1
    assert [type(e) for e in errors] == [Unavailable]
    assert container.devices == (U1,)  # the loser did not detach the winner's device
    assert service.host.find_vgpu(U1).state is VgpuState.OPEN


async def test_the_token_of_a_released_vgpu_is_refused(
    service: HostService, container: Container, dirs: Dirs
) -> None:
    service.create(U1, GVT, T4)
    token = await service.open_device(U1, container.container_id)
    await service.release(U1)

    with pytest.raises(PeerGone):
        await asyncio.to_thread(connect, service.broker.path, token, dirs.shm)


async def test_an_expired_token_is_refused(
    service: HostService, container: Container, dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module, "TOKEN_TTL_S", -1.0)
    service.create(U1, GVT, T4)
    token = await service.open_device(U1, container.container_id)

    with pytest.raises(PeerGone):
        await asyncio.to_thread(connect, service.broker.path, token, dirs.shm)
