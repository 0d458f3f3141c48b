"""The latency workload's summaries on their way out: vCPU status -> GuestStatus proto."""

from __future__ import annotations

from vgpusim.gen.qemu_frontend.v1 import qemu_frontend_pb2 as pb
from vgpusim.qemu_frontend.guest.stats import LatencySummary
from vgpusim.qemu_frontend.guest.testing import SimulatedVgpu
from vgpusim.qemu_frontend.servicer import guest_pb, latency_pb, workload_from_pb
from vgpusim.qemu_frontend.vcpu import GuestState, GuestStatus, Vcpu, Workload, builtin_launcher


def test_the_latency_workload_reaches_the_guest_status_proto(sim: SimulatedVgpu) -> None:
    assert workload_from_pb(pb.WORKLOAD_LATENCY) is Workload.LATENCY
    program = builtin_launcher(sim.env, Workload.LATENCY, {"iterations": "25"})
    vcpu = Vcpu(program, Workload.LATENCY, name="vcpu-test", on_stop=lambda: None)
    vcpu.start()
    assert vcpu.join(60)
    status = vcpu.status()
    assert status.state is GuestState.FINISHED, status.error
    message = guest_pb(status)
    assert message.workload == pb.WORKLOAD_LATENCY
    assert message.HasField("irq_roundtrip_us") and message.HasField("mmio_read_us")
    for summary in (message.irq_roundtrip_us, message.mmio_read_us):
        assert summary.count == 25
        assert 0 < summary.p50 <= summary.p90 <= summary.p99 <= summary.max
    assert message.irq_roundtrip_us.p50 == status.irq_roundtrip_us.p50  # type: ignore[union-attr]


def test_other_workloads_leave_the_summaries_unset(sim: SimulatedVgpu) -> None:
    program = builtin_launcher(sim.env, Workload.SMOKE, {})
    vcpu = Vcpu(program, Workload.SMOKE, name="vcpu-test", on_stop=lambda: None)
    vcpu.start()
    assert vcpu.join(60)
    message = guest_pb(vcpu.status())
    assert message.state == pb.GUEST_STATE_FINISHED
    assert not message.HasField("irq_roundtrip_us") and not message.HasField("mmio_read_us")


def test_latency_pb_copies_every_field() -> None:
    summary = LatencySummary(7, 1.5, 2.5, 3.5, 4.5)
    assert latency_pb(summary) == pb.LatencySummary(count=7, p50=1.5, p90=2.5, p99=3.5, max=4.5)
    assert latency_pb(None) is None
    message = guest_pb(GuestStatus(workload=Workload.LATENCY, mmio_read_us=summary))
    assert message.mmio_read_us.count == 7 and not message.HasField("irq_roundtrip_us")
