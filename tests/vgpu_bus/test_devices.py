"""The device record and the owner-release handshake (the REQ interrupt, kernel-mdev §1.4)."""

from __future__ import annotations

import asyncio

import pytest

from tests.vgpu_bus.helpers import PARENT, SMALL, U1
from vgpusim.common.errors import TimedOut, Unavailable
from vgpusim.vgpu_bus.core.devices import Device, wait_for_release
from vgpusim.vgpu_bus.core.fakes import FakeOwners
from vgpusim.vgpu_bus.core.model import Attr, DeviceState
from vgpusim.vgpu_bus.core.states import IllegalTransition, Op


def _open_device(owner: str = "vm-1") -> Device:
    device = Device(U1, PARENT, SMALL, (Attr("weight", "2"),))
    device.apply(Op.SUCCEEDED)
    device.owner = owner
    device.apply(Op.OPEN)
    device.opened_at = 7.0
    device.apply(Op.SUCCEEDED)
    return device


def _closer(device: Device) -> None:
    device.apply(Op.CLOSE)
    device.apply(Op.SUCCEEDED)


def test_transitions_update_the_snapshot_and_clear_the_owner_when_closed() -> None:
    device = _open_device()
    info = device.info()
    assert (info.state, info.owner, info.opened_at, info.attrs) == (
        DeviceState.OPEN,
        "vm-1",
        7.0,
        (Attr("weight", "2"),),
    )
    _closer(device)
    assert (device.state, device.owner, device.opened_at) == (DeviceState.ACTIVE, None, None)
    with pytest.raises(IllegalTransition):
        device.apply(Op.CLOSE)


async def test_wait_gone_returns_when_the_device_is_removed() -> None:
    device = Device(U1, PARENT, SMALL, ())
    device.apply(Op.SUCCEEDED)

    async def remove_later() -> None:
        await asyncio.sleep(0)
        device.apply(Op.REMOVE)
        device.apply(Op.SUCCEEDED)

    async with asyncio.TaskGroup() as group:
        group.create_task(remove_later())
        await device.wait_gone()
    assert device.gone


async def test_a_closed_device_needs_no_request(owners: FakeOwners) -> None:
    device = _open_device()
    _closer(device)
    await wait_for_release(device, owners, timeout=0.0, interval=1.0)
    assert owners.requests == []


async def test_a_cooperative_owner_is_asked_once_and_releases(owners: FakeOwners) -> None:
    device = _open_device()

    async def release(uuid: str, count: int) -> None:
        _closer(device)

    owners.on_request("vm-1", release)
    await wait_for_release(device, owners, timeout=5.0, interval=1.0)
    assert owners.requests == [(U1, "vm-1", 1)]
    assert device.state is DeviceState.ACTIVE


async def test_the_request_is_repeated_until_the_owner_lets_go(owners: FakeOwners) -> None:
    device = _open_device()

    async def release_on_third(uuid: str, count: int) -> None:
        if count == 3:
            _closer(device)

    owners.on_request("vm-1", release_on_third)
    await wait_for_release(device, owners, timeout=5.0, interval=0.01)
    assert [count for (_, _, count) in owners.requests] == [1, 2, 3]


async def test_an_owner_releasing_later_on_its_own_is_noticed_at_once(owners: FakeOwners) -> None:
    device = _open_device()

    async def close_soon() -> None:
        await asyncio.sleep(0.01)
        _closer(device)

    async with asyncio.TaskGroup() as group:
        group.create_task(close_soon())
        await wait_for_release(device, owners, timeout=5.0, interval=10.0)
    assert len(owners.requests) == 1


async def test_an_uncooperative_owner_times_out_naming_the_owner(owners: FakeOwners) -> None:
    device = _open_device("vm-stubborn")
    with pytest.raises(TimedOut) as info:
        await wait_for_release(device, owners, timeout=0.1, interval=0.03)
    assert info.value.reason == "OWNER_DID_NOT_RELEASE"
    assert info.value.metadata["owner"] == "vm-stubborn"
    assert info.value.metadata["errno"] == "ETIMEDOUT"
    assert "vm-stubborn" in info.value.message
    assert int(info.value.metadata["requests"]) == len(owners.requests) >= 2
    assert device.state is DeviceState.OPEN


async def test_a_failing_notifier_does_not_end_the_wait(owners: FakeOwners) -> None:
    device = _open_device()

    async def unreachable_then_release(uuid: str, count: int) -> None:
        if count == 1:
            raise Unavailable("frontend restarting")
        _closer(device)

    owners.on_request("vm-1", unreachable_then_release)
    await wait_for_release(device, owners, timeout=5.0, interval=0.01)
    assert device.state is DeviceState.ACTIVE
