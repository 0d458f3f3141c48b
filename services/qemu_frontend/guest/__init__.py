"""The built-in guest driver: what runs inside a VM's vCPU thread and drives its vGPU.

A VM of ``qemu_frontend`` has no real guest OS; this package plays the guest kernel's graphics
driver, talking to the vGPU only the way a real driver can: config-space and BAR0 accesses through
the trap path, its own RAM, and interrupts.  One concept per module:

- ``env``       ``GuestEnv``: the MMIO port, guest RAM, the page allocator, ``wait_irq``, a clock;
- ``probe``     PCI bring-up (IDs, BAR sizing, bus master, MSI) and the PVINFO page;
- ``gtt``       ``GuestGtt``: GM buffers backed by guest pages, GTT entry writes, gm <-> gpa;
- ``ring``      the ring (tail, space, wrap with NOOPs), status page seqnos, the batch pool;
- ``config``    ``DriverConfig``, ``DriverStatistics``, ``DeviceFailsafe``, the display mode;
- ``driver``    ``GuestDriver``: init, submit, wait (interrupts, hangs, engine reset), display;
- ``stats``     ``WorkloadStats`` / ``WorkloadSnapshot`` / ``Workload`` / ``GuestState``;
- ``context``   typed workload parameters and the run context;
- ``workloads`` ``run_workload(name, env, params, stop=, stats=)``: smoke, copy, compute, idle,
  hang (and the registry of all of them);
- ``render``    the RENDER workload (animated frames, double-buffered flips);
- ``hostile``   the HOSTILE workload (escape attempts and how they were contained);
- ``latency``   the LATENCY workload (doorbell -> interrupt and register-read latencies);
- ``testing``   ``SimulatedVgpu``: the real gfx_host device model and engine in process, for tests.

Pure and synchronous: no asyncio (except inside ``testing``, to apply GTT updates), no grpc.

Glossary:
- GM: graphics memory, the GPU's address space; the vGPU owns a low and a high GM range.
- GTT: the table mapping each 4 KiB GM page to a guest-physical page (BAR0 + 8 MiB).
- seqno: the number a request writes to its engine's status page when it completes.
- failsafe: the host's refusal to execute anything more for a vGPU after a guest error.
"""

from vgpusim.qemu_frontend.guest.driver import DeviceFailsafe, DriverConfig, DriverStatistics, GuestDriver
from vgpusim.qemu_frontend.guest.env import (
    REGION_BAR0,
    REGION_BAR2,
    REGION_CONFIG,
    Clock,
    GuestEnv,
    SystemClock,
)
from vgpusim.qemu_frontend.guest.stats import GuestState, Workload, WorkloadSnapshot, WorkloadStats
from vgpusim.qemu_frontend.guest.workloads import run_workload, validate_params

__all__ = [
    "REGION_BAR0",
    "REGION_BAR2",
    "REGION_CONFIG",
    "Clock",
    "DeviceFailsafe",
    "DriverConfig",
    "DriverStatistics",
    "GuestDriver",
    "GuestEnv",
    "GuestState",
    "SystemClock",
    "Workload",
    "WorkloadSnapshot",
    "WorkloadStats",
    "run_workload",
    "validate_params",
]
