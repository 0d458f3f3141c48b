"""Stack: connecting by state dir or targets, deadlines, errors of a missing or foreign server."""

from __future__ import annotations

from pathlib import Path

import pytest

from vgpusim.client import Stack, gfx_pb, iommu_pb
from vgpusim.common.errors import NotSupported, TimedOut, Unavailable

from .conftest import fakes


async def test_connect_by_state_dir(served: Path) -> None:
    async with Stack.connect(served) as stack:
        parents = await stack.bus.list_parents()
    assert sorted(p.name for p in parents) == ["0000:00:02.0", "0000:00:03.0"]


async def test_connect_by_target_override(served: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    targets = {"bus": f"unix:{served}/run/vgpu_bus.sock"}
    async with Stack.connect(elsewhere, targets=targets) as stack:
        assert stack.targets["vgpu_bus"] == f"unix:{served}/run/vgpu_bus.sock"
        assert stack.targets["gfx_host"] == f"unix:{elsewhere}/run/gfx_host.sock"
        assert len(await stack.bus.list_types()) == 2


async def test_missing_service_is_unavailable(tmp_path: Path) -> None:
    async with Stack.connect(tmp_path, timeout=2.0) as stack:
        with pytest.raises(Unavailable) as err:
            await stack.bus.list_parents()
    assert err.value.reason == "PEER_UNAVAILABLE"
    assert "vgpu_bus at unix:" in err.value.message


async def test_every_call_has_a_deadline_with_per_call_override(
    stack: Stack, bus_fake: fakes.FakeBus
) -> None:
    bus_fake.delay = 1.0
    with pytest.raises(TimedOut):
        await stack.bus.list_parents(timeout=0.1)
    bus_fake.delay = 0.0
    assert await stack.bus.list_parents(timeout=1.0)


async def test_default_deadline_applies(served: Path, bus_fake: fakes.FakeBus) -> None:
    bus_fake.delay = 1.0
    async with Stack.connect(served, timeout=0.1) as stack:
        with pytest.raises(TimedOut):
            await stack.bus.list_parents()


async def test_clients_reach_their_own_service(served: Path) -> None:
    """iommu pointed at a server without it: UNIMPLEMENTED comes back as NotSupported."""
    bus_sock = f"unix:{served}/run/vgpu_bus.sock"
    async with Stack.connect(served, targets={"iommu": bus_sock}) as stack:
        with pytest.raises(NotSupported):
            await stack.iommu.create_container("vm1", mode=iommu_pb.IOMMU_MODE_EMULATED)
        with pytest.raises(NotSupported):
            async with stack.iommu.keep_alive("vm1", timeout=2.0):
                pass
        sched = await stack.gfx.set_scheduler(
            "0000:00:02.0", policy=gfx_pb.SCHEDULER_POLICY_FIXED_SHARE, weights={}
        )
        assert sched.policy == gfx_pb.SCHEDULER_POLICY_FIXED_SHARE


async def test_clients_need_the_context(tmp_path: Path) -> None:
    stack = Stack.connect(tmp_path)
    with pytest.raises(RuntimeError, match="async with"):
        _ = stack.bus
    async with stack:
        assert stack.frontend.target.endswith("qemu_frontend.sock")
    with pytest.raises(RuntimeError):
        _ = stack.frontend
