"""The ops Protocols' behaviour suite, run against every implementation (today: the fakes).

``VENDORS`` lists the implementations of :class:`VendorOps` to check; an adapter to a real
vendor (``gfx_host``'s client) can be added to it. Each one is built with the catalogue
``{SMALL: 1 unit, BIG: 4 units}`` over a pool of 8 units.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.vgpu_bus.helpers import BIG, SMALL, U1, U2, failure, make_vendor
from vgpusim.common.errors import InvalidArgument, NotFound, VgpusimError
from vgpusim.vgpu_bus.core.fakes import FakeOwners, FakeVendor
from vgpusim.vgpu_bus.core.model import Attr
from vgpusim.vgpu_bus.core.ops import OwnerNotifier, VendorOps

VENDORS: dict[str, Callable[[], VendorOps]] = {"fake": make_vendor}


@pytest.fixture(params=sorted(VENDORS))
def impl(request: pytest.FixtureRequest) -> VendorOps:
    return VENDORS[request.param]()


def test_implementations_satisfy_the_protocols(impl: VendorOps) -> None:
    assert isinstance(impl, VendorOps)
    assert isinstance(FakeOwners(), OwnerNotifier)


async def test_create_takes_shared_resources_and_remove_returns_them(impl: VendorOps) -> None:
    assert (await impl.available_instances(SMALL), await impl.available_instances(BIG)) == (8, 2)
    await impl.create(U1, BIG, ())
    assert (await impl.available_instances(SMALL), await impl.available_instances(BIG)) == (4, 1)
    await impl.remove(U1)
    assert (await impl.available_instances(SMALL), await impl.available_instances(BIG)) == (8, 2)


async def test_create_beyond_capacity_names_the_exhausted_resource(impl: VendorOps) -> None:
    await impl.create(U1, BIG, ())
    await impl.create(U2, BIG, ())
    error = await failure(impl.create("33333333-3333-3333-3333-333333333333", SMALL, ()))
    assert error.code.name == "RESOURCE_EXHAUSTED" and error.reason.endswith("_EXHAUSTED")


async def test_a_refused_attribute_leaves_nothing(impl: VendorOps) -> None:
    error = await failure(impl.create(U1, SMALL, (Attr("no-such-attribute", "1"),)))
    assert isinstance(error, InvalidArgument)
    assert await impl.available_instances(SMALL) == 8
    assert isinstance(await failure(impl.remove(U1)), NotFound)


async def test_open_returns_a_channel_and_release_undoes_it(impl: VendorOps) -> None:
    await impl.create(U1, SMALL, ())
    channel = await impl.open(U1, "vm-1")
    assert channel and all(isinstance(k, str) and isinstance(v, str) for k, v in channel.items())
    await impl.release(U1)
    await impl.remove(U1)


async def test_unknown_types_and_instances_are_errors(impl: VendorOps) -> None:
    for call in (
        impl.available_instances("fake-none"),
        impl.description("fake-none"),
        impl.create(U1, "fake-none", ()),
    ):
        assert isinstance(await failure(call), VgpusimError)
    for missing in (impl.remove(U1), impl.open(U1, "vm-1"), impl.release(U1)):
        assert isinstance(await failure(missing), VgpusimError)


async def test_descriptions_are_text(impl: VendorOps) -> None:
    assert isinstance(await impl.description(SMALL), str)


# -- what the fakes add for tests ------------------------------------------------------------------


async def test_a_racy_fake_vendor_oversubscribes_when_nothing_serialises_it() -> None:
    vendor = make_vendor(pool=2, racy=True)
    uuids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(4)]
    await asyncio.gather(*(vendor.create(u, SMALL, ()) for u in uuids))
    assert vendor.used == 4 > vendor.pool  # why the bus holds the parent lock around create


async def test_pauses_and_injected_failures(vendor: FakeVendor) -> None:
    injected = NotFound("gone", reason="TEST")
    vendor.fail_next("open", injected)
    await vendor.create(U1, SMALL, ())
    assert await failure(vendor.open(U1, "vm-1")) is injected
    gate = vendor.pause("release")
    await vendor.open(U1, "vm-1")
    async with asyncio.TaskGroup() as group:
        group.create_task(vendor.release(U1))
        await gate.entered.wait()
        assert vendor.instances[U1].owner == "vm-1"
        gate.resume()
    assert vendor.instances[U1].owner is None
    assert vendor.calls == [
        ("create", U1, SMALL),
        ("open", U1, "vm-1"),
        ("open", U1, "vm-1"),
        ("release", U1),
    ]


async def test_fake_owners_record_requests_and_run_handlers(owners: FakeOwners) -> None:
    seen: list[tuple[str, int]] = []

    async def handler(uuid: str, count: int) -> None:
        seen.append((uuid, count))

    owners.on_request("vm-1", handler)
    await owners.request_release(U1, "vm-1", 1)
    await owners.request_release(U1, "vm-2", 1)  # no handler: never releases
    assert owners.requests == [(U1, "vm-1", 1), (U1, "vm-2", 1)]
    assert seen == [(U1, 1)]
