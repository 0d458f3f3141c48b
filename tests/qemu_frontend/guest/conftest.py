"""Fixtures of the guest driver tests: an in-process vGPU (the real device model and engine)."""

from __future__ import annotations

import pytest

from vgpusim.qemu_frontend.core.memory import MIB
from vgpusim.qemu_frontend.guest.driver import GuestDriver
from vgpusim.qemu_frontend.guest.testing import CANARY, SimulatedVgpu


@pytest.fixture
def sim() -> SimulatedVgpu:
    """A GVTg_V5_8 vGPU over 32 MiB of canary-filled guest RAM, with a neighbour vGPU."""
    return SimulatedVgpu(ram_bytes=32 * MIB, canary=CANARY, neighbor=True)


@pytest.fixture
def driver(sim: SimulatedVgpu) -> GuestDriver:
    """A driver that has probed, read PVINFO and initialised the vGPU."""
    d = GuestDriver(sim.env)
    d.init()
    return d
