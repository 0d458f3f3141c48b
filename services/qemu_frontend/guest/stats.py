"""What a running guest workload reports: a thread-safe counter record and its frozen snapshots.

The workload (vCPU thread) updates a :class:`WorkloadStats`; the frontend's gRPC handlers read
:meth:`WorkloadStats.snapshot` at any time (``GetGuestStatus``).  The fields mirror the
``GuestStatus`` message of ``qemu_frontend.proto`` plus a few the proto may grow into
(iterations, verified results, hostile attempts, failsafe, a short event log).  The latency
workload adds :class:`LatencySummary` records (percentiles of its per-operation samples).

Glossary:
- verified: a GPU result the guest checked against the CPU's own computation.
- contained: a hostile attempt whose effect the host refused or confined to the guest's mappings.
- nearest rank: the ``q`` percentile of n sorted samples is the one at index ``min(n - 1, int(q * n))``
  (what ``vgpusim bench`` uses for its baselines).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from vgpusim.common.errors import InvalidArgument
from vgpusim.qemu_frontend.guest.driver import DriverStatistics

MAX_EVENTS: Final = 64


class Workload(enum.StrEnum):
    """The built-in workloads (the proto's ``WORKLOAD_*`` without the prefix, lower case)."""

    SMOKE = "smoke"
    RENDER = "render"
    COPY = "copy"
    COMPUTE = "compute"
    IDLE = "idle"
    HANG = "hang"
    HOSTILE = "hostile"
    LATENCY = "latency"

    @classmethod
    def parse(cls, name: str) -> Workload:
        """``"render"``, ``"RENDER"`` or ``"WORKLOAD_RENDER"`` -> ``Workload.RENDER``."""
        key = name.strip().lower().removeprefix("workload_")
        try:
            return cls(key)
        except ValueError:
            known = ", ".join(w.value for w in cls)
            raise InvalidArgument(
                f"unknown workload {name!r} (known: {known})", reason="UNKNOWN_WORKLOAD"
            ) from None


class GuestState(enum.Enum):
    """Where the guest's workload is (the proto's ``GUEST_STATE_*``)."""

    STOPPED = "stopped"  # nothing started yet
    RUNNING = "running"
    FINISHED = "finished"  # ran to its end or was stopped
    FAILED = "failed"  # ended with an error (see ``error``)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Nearest-rank percentiles of per-operation latencies, in microseconds (``count`` samples)."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of_ns(cls, samples_ns: Sequence[int]) -> LatencySummary:
        """The summary of ``samples_ns`` (nanoseconds); all zero for no samples."""
        if not samples_ns:
            return cls(0, 0.0, 0.0, 0.0, 0.0)
        ordered = sorted(samples_ns)
        n = len(ordered)

        def rank(q: float) -> float:
            return ordered[min(n - 1, int(q * n))] / 1000

        return cls(n, rank(0.5), rank(0.9), rank(0.99), ordered[-1] / 1000)


@dataclass(frozen=True, slots=True)
class WorkloadSnapshot:
    """A consistent copy of the counters of one workload run."""

    workload: Workload | None = None
    state: GuestState = GuestState.STOPPED
    commands_submitted: int = 0
    interrupts_received: int = 0
    frames_drawn: int = 0
    bytes_copied: int = 0
    hangs_detected: int = 0
    resets: int = 0
    first_irq_latency_us: float | None = None  # first doorbell -> first interrupt
    error: str = ""
    iterations: int = 0
    verified: int = 0
    hostile_attempts: int = 0
    hostile_contained: int = 0
    failsafe: bool = False  # the host stopped executing for this vGPU
    events: tuple[str, ...] = ()  # the last MAX_EVENTS notable events, oldest first
    irq_roundtrip_us: LatencySummary | None = None  # latency: doorbell -> interrupt seen
    mmio_read_us: LatencySummary | None = None  # latency: one trapped BAR0 register read


class WorkloadStats:
    """The live counters of one workload run (every method is thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snap = WorkloadSnapshot()

    def snapshot(self) -> WorkloadSnapshot:
        with self._lock:
            return self._snap

    def begin(self, workload: Workload) -> None:
        """A new run: every counter back to zero, state RUNNING."""
        with self._lock:
            self._snap = WorkloadSnapshot(workload=workload, state=GuestState.RUNNING)

    def add(
        self,
        *,
        frames: int = 0,
        bytes_copied: int = 0,
        iterations: int = 0,
        verified: int = 0,
        attempts: int = 0,
        contained: int = 0,
    ) -> None:
        """Add to the workload's own counters."""
        with self._lock:
            s = self._snap
            self._snap = replace(
                s,
                frames_drawn=s.frames_drawn + frames,
                bytes_copied=s.bytes_copied + bytes_copied,
                iterations=s.iterations + iterations,
                verified=s.verified + verified,
                hostile_attempts=s.hostile_attempts + attempts,
                hostile_contained=s.hostile_contained + contained,
            )

    def sync(self, driver: DriverStatistics) -> None:
        """Copy the driver's counters (commands, interrupts, hangs, resets, latency)."""
        with self._lock:
            self._snap = replace(
                self._snap,
                commands_submitted=driver.commands_submitted,
                interrupts_received=driver.interrupts_received,
                hangs_detected=driver.hangs_detected,
                resets=driver.resets,
                first_irq_latency_us=driver.first_irq_latency_us,
            )

    def note(self, event: str) -> None:
        """Append to the bounded event log."""
        with self._lock:
            events = (*self._snap.events, event)[-MAX_EVENTS:]
            self._snap = replace(self._snap, events=events)

    def set_latency(
        self, *, irq_roundtrip: LatencySummary | None = None, mmio_read: LatencySummary | None = None
    ) -> None:
        """Publish latency summaries (None leaves a summary as it is)."""
        with self._lock:
            s = self._snap
            self._snap = replace(
                s,
                irq_roundtrip_us=irq_roundtrip if irq_roundtrip is not None else s.irq_roundtrip_us,
                mmio_read_us=mmio_read if mmio_read is not None else s.mmio_read_us,
            )

    def mark_failsafe(self) -> None:
        with self._lock:
            self._snap = replace(self._snap, failsafe=True)

    def finish(self) -> None:
        """The run ended normally (or was stopped)."""
        with self._lock:
            if self._snap.state is GuestState.RUNNING:
                self._snap = replace(self._snap, state=GuestState.FINISHED)

    def fail(self, error: str) -> None:
        """The run ended with ``error``."""
        with self._lock:
            self._snap = replace(self._snap, state=GuestState.FAILED, error=error)
