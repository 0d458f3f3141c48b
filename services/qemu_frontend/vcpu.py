"""The guest's vCPU: one thread running the built-in guest driver's workload, stopped by an event.

StartGuest builds a :class:`~vgpusim.qemu_frontend.guest.env.GuestEnv` over the VM's RAM and its
vGPU's port, asks a :data:`GuestLauncher` for the workload's :class:`GuestProgram` and runs it in a
:class:`Vcpu` thread.  The program returns by itself when its workload is done (SMOKE: one batch,
one interrupt) or when the stop event is set (StopGuest, DetachDevice, DestroyVm); the VMM also
cancels the guest's interrupt wait so that a stop never waits for a wait_irq timeout.

| how the thread ends | state |
|---|---|
| the program returned, no stop asked | FINISHED |
| the program returned after a stop | STOPPED |
| the program raised | FAILED (``error`` holds the message; unexpected exceptions are logged) |

Glossary:
- program: one run of the guest driver with one workload; its ``stats`` are read from other
  threads while it runs (plain counters, read without locks: a snapshot may be a tick behind).
- launcher: ``(env, workload, params) -> program``; the built-in one is :func:`builtin_launcher`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from vgpusim.common.errors import VgpusimError, WrongState
from vgpusim.common.logs import get_logger
from vgpusim.qemu_frontend.guest.env import GuestEnv
from vgpusim.qemu_frontend.guest.stats import GuestState, LatencySummary, Workload, WorkloadStats

__all__ = [
    "GuestLauncher",
    "GuestProgram",
    "GuestState",
    "GuestStatus",
    "Vcpu",
    "Workload",
    "builtin_launcher",
]

_log = get_logger("vgpusim.qemu_frontend.vcpu")


@dataclass(frozen=True, slots=True)
class GuestStatus:
    """A snapshot of the guest driver (``workload`` None: never started)."""

    state: GuestState = GuestState.STOPPED
    workload: Workload | None = None
    commands_submitted: int = 0
    interrupts_received: int = 0
    frames_drawn: int = 0
    bytes_copied: int = 0
    hangs_detected: int = 0
    resets: int = 0
    first_irq_latency_us: float = 0.0
    error: str = ""
    irq_roundtrip_us: LatencySummary | None = None  # LATENCY only
    mmio_read_us: LatencySummary | None = None  # LATENCY only


class GuestProgram(Protocol):
    """One workload run of the guest driver."""

    @property
    def stats(self) -> object:
        """Counters named as :class:`GuestStatus`'s, or an object whose ``snapshot()`` has them
        (missing ones read as 0)."""
        ...

    def run(self, stop: threading.Event) -> None:
        """Run until done or until ``stop`` is set; raise if the guest fails."""
        ...


GuestLauncher = Callable[[GuestEnv, Workload, Mapping[str, str]], GuestProgram]


class _BuiltinProgram:
    """:func:`vgpusim.qemu_frontend.guest.workloads.run_workload` as a :class:`GuestProgram`."""

    def __init__(self, env: GuestEnv, workload: Workload, params: Mapping[str, str]) -> None:
        self._env = env
        self._workload = workload
        self._params = dict(params)
        self.stats = WorkloadStats()

    def run(self, stop: threading.Event) -> None:
        from vgpusim.qemu_frontend.guest import workloads

        final = workloads.run_workload(
            self._workload.value, self._env, self._params, stop=stop, stats=self.stats
        )
        if final.state is GuestState.FAILED:
            raise WrongState(final.error or "the guest workload failed", reason="GUEST_FAILED")


def builtin_launcher(env: GuestEnv, workload: Workload, params: Mapping[str, str]) -> GuestProgram:
    """The built-in guest driver (:mod:`vgpusim.qemu_frontend.guest`) running ``workload``.

    The parameters are checked here, before the vCPU starts (InvalidArgument ``BAD_WORKLOAD_PARAM``).
    """
    from vgpusim.qemu_frontend.guest import workloads

    workloads.validate_params(workload.value, dict(params))
    return _BuiltinProgram(env, workload, params)


def _counter(stats: object, name: str) -> int:
    value = getattr(stats, name, 0)
    return int(value) if isinstance(value, int | float) else 0


def _latency(stats: object, name: str) -> LatencySummary | None:
    value = getattr(stats, name, None)
    return value if isinstance(value, LatencySummary) else None


class Vcpu:
    """The thread running one :class:`GuestProgram`; ``request_stop`` then ``join`` to end it."""

    def __init__(
        self, program: GuestProgram, workload: Workload, *, name: str, on_stop: Callable[[], None]
    ) -> None:
        self.workload = workload
        self._program = program
        self._on_stop = on_stop  # wakes the guest from wait_irq
        self._stop = threading.Event()
        self._state = GuestState.RUNNING
        self._error = ""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._state is GuestState.RUNNING

    def request_stop(self) -> None:
        """Ask the guest to stop (it checks the event between steps; its interrupt wait returns)."""
        self._stop.set()
        self._on_stop()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the thread to end (blocking); whether it ended."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._program.run(self._stop)
        except VgpusimError as exc:
            self._error = exc.message
            self._state = GuestState.FAILED
            _log.info(
                "guest workload failed: %s",
                exc.message,
                extra={"workload": self.workload.value, "reason": exc.reason},
            )
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            self._state = GuestState.FAILED
            _log.exception("guest driver crashed", extra={"workload": self.workload.value})
        else:
            self._state = GuestState.STOPPED if self._stop.is_set() else GuestState.FINISHED

    def status(self) -> GuestStatus:
        """A snapshot of the state and the program's counters."""
        stats = self._program.stats
        snapshot = getattr(stats, "snapshot", None)
        counters = snapshot() if callable(snapshot) else stats
        latency = getattr(counters, "first_irq_latency_us", None)
        return GuestStatus(
            state=self._state,
            workload=self.workload,
            commands_submitted=_counter(counters, "commands_submitted"),
            interrupts_received=_counter(counters, "interrupts_received"),
            frames_drawn=_counter(counters, "frames_drawn"),
            bytes_copied=_counter(counters, "bytes_copied"),
            hangs_detected=_counter(counters, "hangs_detected"),
            resets=_counter(counters, "resets"),
            first_irq_latency_us=float(latency) if isinstance(latency, int | float) else 0.0,
            error=self._error,
            irq_roundtrip_us=_latency(counters, "irq_roundtrip_us"),
            mmio_read_us=_latency(counters, "mmio_read_us"),
        )
