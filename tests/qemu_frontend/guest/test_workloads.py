"""The workloads end to end on the in-process vGPU: what the frontend's StartGuest runs."""

from __future__ import annotations

import threading

import pytest

from vgpusim.common.errors import InvalidArgument
from vgpusim.gfx_host.core.display import DRM_FORMAT_XRGB8888
from vgpusim.gfx_host.core.engine.commands import ComputeOp
from vgpusim.qemu_frontend.core.memory import MIB
from vgpusim.qemu_frontend.guest.render import BARS, Scene
from vgpusim.qemu_frontend.guest.stats import GuestState, Workload, WorkloadStats
from vgpusim.qemu_frontend.guest.testing import IRQ_MSI, NVIDIA_PARENT, SimulatedVgpu
from vgpusim.qemu_frontend.guest.workloads import SPECS, cpu_compute, run_workload, validate_params


def _contained(sim: SimulatedVgpu) -> None:
    assert sim.stray_pages() == []
    assert sim.neighbor_intact()


def test_smoke_end_to_end(sim: SimulatedVgpu) -> None:
    snap = run_workload(Workload.SMOKE, sim.env, {"value": "0x12345678"})
    assert snap.state is GuestState.FINISHED, snap.error
    assert (snap.workload, snap.commands_submitted, snap.interrupts_received) == (Workload.SMOKE, 1, 1)
    assert (snap.iterations, snap.verified, snap.hangs_detected) == (1, 1, 0)
    assert snap.first_irq_latency_us is not None and snap.first_irq_latency_us > 0
    assert sim.irq_log == [IRQ_MSI]
    assert [c.seqno for c in sim.completions] == [1]
    assert sim.vgpu.regs.read(0x4400C, 4) == 0  # shut down: interrupts disabled
    _contained(sim)


def test_render_draws_frames_that_show_on_the_plane(sim: SimulatedVgpu) -> None:
    snap = run_workload("render", sim.env, {"frames": 6, "interval_ms": 0})
    assert snap.state is GuestState.FINISHED, snap.error
    assert (snap.frames_drawn, snap.interrupts_received) == (6, 6)  # the flip's event shares the MSI
    plane = sim.plane()
    assert (plane.drm_format, plane.width, plane.height) == (DRM_FORMAT_XRGB8888, 1024, 768)
    assert plane.stride == 4096
    screen = sim.screen()
    assert len(screen) == 4096 * 768
    scene = Scene(1024, 768, 4096)
    pixels = {int.from_bytes(screen[i : i + 4], "little") & 0xFFFFFF for i in range(0, len(screen), 4 * 97)}
    assert len(pixels) > 20  # a gradient, bars and a square, not a flat fill
    assert set(BARS) <= pixels | {scene.pixel(5, 0, 0)}
    for x, y in scene.samples(5):  # the last frame (5) is the one on screen
        offset = y * 4096 + x * 4
        assert int.from_bytes(screen[offset : offset + 4], "little") & 0xFFFFFF == scene.pixel(5, x, y)
    _contained(sim)


def test_render_flips_between_two_buffers(sim: SimulatedVgpu) -> None:
    run_workload("render", sim.env, {"frames": 3, "interval_ms": 0})
    odd = sim.plane()  # frame 2 is in the first framebuffer
    run_workload("render", sim.env, {"frames": 4, "interval_ms": 0})
    even = sim.plane()  # frame 3 in the second one
    assert even.gm_addr == odd.gm_addr + odd.size
    assert even.dmabuf_id != odd.dmabuf_id


def test_copy_verifies_every_copy(sim: SimulatedVgpu) -> None:
    snap = run_workload("copy", sim.env, {"bytes": str(256 * 1024), "iterations": 5})
    assert snap.state is GuestState.FINISHED, snap.error
    assert (snap.bytes_copied, snap.iterations, snap.verified) == (5 * 256 * 1024, 5, 5)
    _contained(sim)


@pytest.mark.parametrize("op", ["all", "crc32", "sum32", "xor32"])
def test_compute_matches_the_cpu(sim: SimulatedVgpu, op: str) -> None:
    snap = run_workload("compute", sim.env, {"bytes": 4096, "iterations": 3, "op": op})
    assert snap.state is GuestState.FINISHED, snap.error
    assert snap.verified == 3 * (3 if op == "all" else 1)


def test_cpu_reference() -> None:
    data = bytes(range(8))
    assert cpu_compute(ComputeOp.SUM32, data) == 0x0302_0100 + 0x0706_0504
    assert cpu_compute(ComputeOp.XOR32, data) == 0x0302_0100 ^ 0x0706_0504


def test_hang_is_detected_and_the_engine_recovers(sim: SimulatedVgpu) -> None:
    snap = run_workload("hang", sim.env, {"iterations": 2, "timeout_ms": 300})
    assert snap.state is GuestState.FINISHED, snap.error
    assert (snap.hangs_detected, snap.resets, snap.verified) == (2, 2, 2)
    assert any("hang detected" in e for e in snap.events)
    assert not sim.vgpu.regs.ring(sim.vgpu.regs.engines[0]).hung


def test_a_short_spin_is_not_a_hang(sim: SimulatedVgpu) -> None:
    snap = run_workload("hang", sim.env, {"spin_us": 1000})
    assert (snap.state, snap.hangs_detected) == (GuestState.FINISHED, 0)


def test_idle_runs_until_stopped(sim: SimulatedVgpu) -> None:
    stop, stats = threading.Event(), WorkloadStats()
    thread = threading.Thread(
        target=run_workload, args=("idle", sim.env), kwargs={"stop": stop, "stats": stats}
    )
    thread.start()
    while not sim.vgpu.regs.ring(sim.vgpu.regs.engines[0]).enabled:
        thread.join(0.01)
    assert stats.snapshot().state is GuestState.RUNNING
    stop.set()
    thread.join(5)
    assert stats.snapshot().state is GuestState.FINISHED


def test_looping_workloads_stop_on_request(sim: SimulatedVgpu) -> None:
    stop, stats = threading.Event(), WorkloadStats()
    thread = threading.Thread(
        target=run_workload,
        args=("copy", sim.env, {"bytes": 4096}),
        kwargs={"stop": stop, "stats": stats},
    )
    thread.start()
    while stats.snapshot().iterations < 3:
        thread.join(0.01)
    stop.set()
    thread.join(5)
    snap = stats.snapshot()
    assert snap.state is GuestState.FINISHED and snap.iterations >= 3


def test_parameters_are_checked_before_the_device_is_touched(sim: SimulatedVgpu) -> None:
    with pytest.raises(InvalidArgument) as exc:
        run_workload("copy", sim.env, {"bogus": "1"})
    assert exc.value.reason == "BAD_WORKLOAD_PARAM"
    with pytest.raises(InvalidArgument):
        run_workload("copy", sim.env, {"bytes": "lots"})
    with pytest.raises(InvalidArgument) as exc:
        run_workload("dance", sim.env)
    assert exc.value.reason == "UNKNOWN_WORKLOAD"
    assert not sim.vgpu.regs.pv_notified
    assert validate_params("WORKLOAD_RENDER", {"frames": "3"}).integer("frames") == 3
    assert set(SPECS) == set(Workload)


def test_run_time_errors_end_the_workload_failed(sim: SimulatedVgpu) -> None:
    snap = run_workload("copy", sim.env, {"bytes": 3, "iterations": 1})
    assert snap.state is GuestState.FAILED and "bytes" in snap.error
    snap = run_workload("compute", sim.env, {"bytes": 6})
    assert snap.state is GuestState.FAILED and "multiple of 4" in snap.error
    snap = run_workload("copy", sim.env, {"engine": "vcs"})
    assert snap.state is GuestState.FAILED and "only rcs, bcs" in snap.error


def test_workloads_on_the_framebuffer_model() -> None:
    sim = SimulatedVgpu(parent=NVIDIA_PARENT, type_id="nvidia-A10-1Q", ram_bytes=96 * MIB)
    snap = run_workload("render", sim.env, {"frames": 2, "interval_ms": 0})
    assert snap.state is GuestState.FINISHED, snap.error
    assert (sim.plane().width, sim.plane().height) == (2560, 1440)
    assert run_workload("smoke", sim.env).state is GuestState.FINISHED  # a second boot of the driver


def test_render_falls_back_to_one_framebuffer_when_guest_ram_is_short() -> None:
    sim = SimulatedVgpu(ram_bytes=6 * MIB)
    snap = run_workload("render", sim.env, {"frames": 3, "interval_ms": 0})
    assert snap.state is GuestState.FINISHED, snap.error
    assert snap.frames_drawn == 3
    assert sim.plane().dmabuf_id == 1  # never flipped: drawn in place


@pytest.mark.parametrize(("width", "height"), [(1024, 768), (1920, 1200), (1920, 1080), (800, 600)])
def test_scene_reference_matches_the_drawn_bands_at_every_resolution(width: int, height: int) -> None:
    """pixel() must put each row in the band commands() fills it with (1200 rows / 32 bands is not whole)."""
    from vgpusim.qemu_frontend.guest.render import BANDS, Scene

    scene = Scene(width, height, width * 4)
    for band in range(BANDS):
        for y in (band * height // BANDS, (band + 1) * height // BANDS - 1):
            assert scene.pixel(0, width - 1, y) == scene.band_color(band, 0) or scene.bars_y <= y
