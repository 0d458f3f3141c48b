"""HOSTILE: every escape attempt is contained, nothing outside the guest's mappings changes."""

from __future__ import annotations

import pytest

from vgpusim.gfx_host.core.registers import FailsafeReason
from vgpusim.qemu_frontend.core.memory import MIB
from vgpusim.qemu_frontend.guest.hostile import ESCAPES
from vgpusim.qemu_frontend.guest.stats import GuestState
from vgpusim.qemu_frontend.guest.testing import NVIDIA_PARENT, SimulatedVgpu
from vgpusim.qemu_frontend.guest.workloads import run_workload

AUDIT_REASON = {
    "gm_out_of_partition": "ADDRESS_OUT_OF_PARTITION",
    "batch_out_of_partition": "ADDRESS_OUT_OF_PARTITION",
    "register_write": "REGISTER_NOT_ALLOWED",
    "ring_beyond_ring": "BAD_RING",
    "ring_outside_partition": "ADDRESS_OUT_OF_PARTITION",
}


@pytest.mark.parametrize("escape", ESCAPES)
def test_every_attempt_is_contained(sim: SimulatedVgpu, escape: str) -> None:
    snap = run_workload("hostile", sim.env, {"escape": escape, "timeout_ms": 200})
    assert snap.state is GuestState.FINISHED, snap.error
    assert snap.hostile_attempts == snap.hostile_contained == 6
    assert snap.failsafe and sim.vgpu.failsafe is FailsafeReason.GUEST_ERROR
    assert [e.reason for e in sim.rejections] == [AUDIT_REASON[escape]]
    assert snap.resets == 3  # the 3 DMA faults were recovered; the escape's reset did not take
    assert snap.hangs_detected == (3 if escape.startswith("ring_") else 4)  # + the escape's request
    assert sim.stray_pages() == []  # no page outside the guest's own pinned mappings changed
    assert sim.neighbor_intact()  # nor anything of the other vGPU
    faults = {f.reason for f in sim.vgpu.gtt.faults()}
    assert "GTT_SCRATCH_PAGE" in faults  # the unmapped GPAs went to the scratch page
    assert sim.vgpu.gtt.statistics().writes_ignored_total >= 2  # GTT entries outside the partition


def test_after_the_vmm_resets_the_device_the_guest_works_again(sim: SimulatedVgpu) -> None:
    run_workload("hostile", sim.env, {"timeout_ms": 200})
    assert run_workload("smoke", sim.env).state is GuestState.FAILED  # still in failsafe
    sim.reset()
    snap = run_workload("smoke", sim.env)
    assert snap.state is GuestState.FINISHED, snap.error


def test_hostile_on_the_framebuffer_model() -> None:
    sim = SimulatedVgpu(parent=NVIDIA_PARENT, type_id="nvidia-A10-1Q", ram_bytes=96 * MIB, neighbor=True)
    snap = run_workload("hostile", sim.env, {"timeout_ms": 200})
    assert snap.state is GuestState.FINISHED, snap.error
    assert snap.hostile_attempts == snap.hostile_contained == 6
    assert "ignored 1 GTT entries" in snap.events[0]  # vGPU 1 starts at GM 0: only the page above
    assert sim.neighbor_intact()
