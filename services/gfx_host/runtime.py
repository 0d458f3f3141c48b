"""gfx_host's hot path: one GPU thread per parent and one trap thread per open vGPU.

Threads (the asyncio loop stays on the control path only):

- **GPU thread** (:class:`ParentRuntime`): drives the parent's :class:`EngineRunner` (arbiter +
  executor) on a monotonic clock; sleeps when quiescent, woken by a doorbell.
- **trap thread** (:class:`DeviceRuntime`): consumes the device channel's ``trap`` ring, runs
  the access against the device model, answers reads, and turns write effects into work:
  doorbells are audited and queued on the runner, GDRST flushes, interrupts go to the ``irq`` ring.
  Between traps it spins (``fastpath.AdaptiveSpin``, yielding, up to :data:`TRAP_SPIN_US`)
  before sleeping on the ring's eventfd.

After queueing a doorbell's workload the trap thread steps the runner itself
(:meth:`ParentRuntime.run_inline`): a free engine starts the workload at once and a completion
due within :data:`INLINE_WAIT_US` is waited for there, so an idle GPU answers a doorbell with no
thread hand-off.  The GPU thread is woken only if the runner's next event (a later completion,
the next scheduler tick) comes before the time it already sleeps until; it still owns every
event that is not imminent.

Locking: ``ParentRuntime.lock`` guards the runner and every device model of the parent; it is held
while a trap is handled, a workload runs, or the loop changes the GTT shadow (pins, unmap
notifications: :meth:`ParentRuntime.hold`), so the loop never blocks on it (it waits through
``hold`` or from a worker thread).  A thread never waits for the loop while holding it; GTT updates
are applied lazily (before the next doorbell is audited, or an aperture access) by a call into the
loop.

Glossary:
- doorbell: a guest write of a ring tail register.
- submitted head: where the next audit starts (the tail of the last submitted workload).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable

from vgpusim.common.errors import TimedOut, VgpusimError
from vgpusim.common.fastpath import OP_READ, AdaptiveSpin, HostPort, Trap, status_of
from vgpusim.common.logs import get_logger
from vgpusim.common.shm.errors import PeerGone
from vgpusim.gfx_host.core.engine.audit import CommandAuditor
from vgpusim.gfx_host.core.engine.runner import EngineRunner, MonotonicClock
from vgpusim.gfx_host.core.engine.workload import Completion, CompletionStatus, RingState
from vgpusim.gfx_host.core.gmem import GttGraphicsMemory
from vgpusim.gfx_host.core.gpu import PhysicalGpu
from vgpusim.gfx_host.core.registers import Engine, FailsafeReason, WriteEffect
from vgpusim.gfx_host.core.vgpu import REGION_BAR0, REGION_BAR2, REGION_CONFIG, Vgpu

_log = get_logger("vgpusim.gfx_host.runtime")
IRQ_INTX, IRQ_MSI = 0, 1
SPIN_WAIT_S = 0.0002  # a next event closer than this is spun for, not slept for
INLINE_WAIT_US = 200  # a trap thread waits this long at most for a completion it started
TRAP_POLL_S = 0.05  # a trap thread with nothing to do re-checks this often whether it must stop
TRAP_SPIN_US = 50.0  # longest spin (yielding, adaptive) of a trap thread for the next trap
STOP_TIMEOUT_S = 5.0


class ParentRuntime:
    """The execution side of one physical GPU."""

    def __init__(self, gpu: PhysicalGpu, *, watchdog_us: int) -> None:
        self.gpu = gpu
        self.lock = threading.Lock()
        self.clock = MonotonicClock()
        self.runner = EngineRunner(clock=self.clock, on_complete=self._on_complete, watchdog_us=watchdog_us)
        self.devices: dict[int, DeviceRuntime] = {}
        self._wake = threading.Event()
        self._wake_at: int | None = None  # the GPU thread's next step (clock us), None: a kick's
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"gpu-{gpu.parent}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=5)

    def kick(self) -> None:
        self._wake.set()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Hold :attr:`lock` from the event loop (for GTT changes that await RPCs)."""
        loop = asyncio.get_running_loop()
        acquired = loop.run_in_executor(None, self.lock.acquire)
        try:
            await asyncio.shield(acquired)
        except asyncio.CancelledError:
            acquired.add_done_callback(lambda _: self.lock.release())
            raise
        try:
            yield
        finally:
            self.lock.release()

    def run_inline(self, done: Callable[[], bool]) -> None:
        """Step the runner on the calling thread after a submission (see the module docstring).

        Steps again while ``done()`` is false and the next event is at most
        :data:`INLINE_WAIT_US` after the first step (the workload just started completes then),
        taking :attr:`lock` per step; then wakes the GPU thread if it would sleep past the next
        event.  Must be called without :attr:`lock` held.
        """
        limit = self.clock.now_us() + INLINE_WAIT_US
        runner = self.runner
        while True:
            with self.lock:
                try:
                    next_us = runner.step()
                except Exception:  # a broken invariant: leave it to the GPU thread, which logs it
                    next_us, wake_at, again = 0, None, False
                else:
                    if next_us is None:
                        return
                    wake_at = self._wake_at
                    again = not done() and next_us <= limit
            if not again:
                break
            os.sched_yield()  # the completion is microseconds away: let other threads run meanwhile
        if wake_at is None or next_us < wake_at:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            with self.lock:
                try:
                    next_us = self.runner.step()
                except Exception:  # a broken invariant: log loudly, keep the GPU thread alive
                    _log.exception("engine runner failed", extra={"parent": self.gpu.parent})
                    next_us = None
                self._wake_at = next_us
            if next_us is None:
                self._wake.wait()
                continue
            delay = (next_us - self.clock.now_us()) / 1e6
            if delay > SPIN_WAIT_S:
                self._wake.wait(delay - SPIN_WAIT_S / 2)
            else:  # spinning for an imminent event: let the trap threads have the GIL meanwhile
                os.sched_yield()

    def _on_complete(self, vgpu_id: int, completion: Completion) -> None:
        device = self.devices.get(vgpu_id)
        if device is not None:
            device.on_complete(completion)


class DeviceRuntime:
    """One open vGPU: its channel, trap thread, auditor and completion handling."""

    def __init__(
        self,
        parent: ParentRuntime,
        vgpu: Vgpu,
        port: HostPort,
        memory: GttGraphicsMemory,
        *,
        apply_gtt: Callable[[], None],
        weight: int,
    ) -> None:
        self.parent = parent
        self.vgpu = vgpu
        self.port = port
        self.memory = memory
        self.auditor = CommandAuditor(memory)
        self._apply_gtt = apply_gtt
        self.gtt_dirty = False
        self.submitted: dict[Engine, int] = {}
        self.workloads = self.hangs = self.rejections = self.msis = self.write_errors = 0
        self.busy_us = 0
        self._msi_count_lock = threading.Lock()
        self._closing = False
        with parent.lock:
            parent.runner.add_vgpu(vgpu.vgpu_id, memory, weight=weight)
            parent.devices[vgpu.vgpu_id] = self
        self._thread = threading.Thread(target=self._serve, name=f"trap-{vgpu.uuid[:8]}", daemon=True)
        self._thread.start()

    # ---- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop executing for this vGPU, end the trap thread, then close the channel.

        Blocks (up to :data:`STOP_TIMEOUT_S`): call it off the event loop, which the trap thread
        may be waiting for (GTT pins).  The channel is closed only once the thread is gone, so it
        never touches released rings.
        """
        self._closing = True
        with self.parent.lock:
            self.parent.devices.pop(self.vgpu.vgpu_id, None)
            with contextlib.suppress(VgpusimError):
                self.parent.runner.remove_vgpu(self.vgpu.vgpu_id)
        self._thread.join(timeout=STOP_TIMEOUT_S)
        if self._thread.is_alive():
            _log.warning("trap thread did not stop", extra={"vgpu": self.vgpu.uuid})
        self.port.close()

    def reset_engines(self) -> None:
        """A DMLR: flush every engine queue and forget the submitted heads (caller holds the lock)."""
        self.parent.runner.reset_engine(self.vgpu.vgpu_id)
        self.submitted.clear()

    # ---- traps -------------------------------------------------------------------------------

    def _serve(self) -> None:
        traps = self.port.traps
        spin = AdaptiveSpin(TRAP_SPIN_US)
        try:
            while not self._closing:
                ring = traps.ring  # a closed channel's stand-in raises WrongState
                if not ring.has_data():  # a guest's next access often follows closely
                    spin.spin(ring.has_data)
                try:  # bounded: nothing but a trap or the frontend's exit would wake it otherwise
                    traps.wait_readable(timeout=TRAP_POLL_S, spin_us=0)
                except TimedOut:
                    continue
                for trap in self.port.next_traps():
                    self._handle(trap)
        except PeerGone:
            _log.info("frontend left the channel", extra={"vgpu": self.vgpu.uuid})
        except VgpusimError as exc:
            if not self._closing:
                _log.warning("trap thread ends: %s", exc, extra={"vgpu": self.vgpu.uuid})

    def _handle(self, trap: Trap) -> None:
        effect: WriteEffect | None = None
        value = status = 0
        vgpu = self.vgpu
        if trap.region == REGION_BAR2:
            self._sync_gtt()  # the aperture is seen through the GTT as the guest wrote it
        with self.parent.lock:
            try:
                if trap.op == OP_READ:
                    value = self._read(trap)
                elif trap.region == REGION_BAR0:
                    effect = vgpu.mmio_write(trap.offset, trap.size, trap.value)
                elif trap.region == REGION_CONFIG:
                    vgpu.config_write(trap.offset, trap.size, trap.value)
                elif trap.region == REGION_BAR2:
                    vgpu.aperture_write(trap.offset, trap.value.to_bytes(trap.size, "little"))
                else:
                    status = -22
            except VgpusimError as exc:
                status = status_of(exc)
        if trap.op == OP_READ:
            self.port.reply(trap.seq, status, value)
        elif status:
            self.write_errors += 1
        if effect:
            self._on_effect(effect)

    def _read(self, trap: Trap) -> int:
        if trap.region == REGION_BAR0:
            return self.vgpu.mmio_read(trap.offset, trap.size)
        if trap.region == REGION_CONFIG:
            return self.vgpu.config_read(trap.offset, trap.size)
        if trap.region == REGION_BAR2:
            return int.from_bytes(self.vgpu.aperture_read(trap.offset, trap.size), "little")
        raise VgpusimError(f"region {trap.region} has no registers", errno=22)

    def _on_effect(self, effect: WriteEffect) -> None:
        if effect.gtt_updated:
            self.gtt_dirty = True
        if effect.irq:
            self.raise_msi()
        if effect.failsafe is not None:
            with self.parent.lock:
                self.parent.runner.flush(self.vgpu.vgpu_id)
        if effect.resets:
            with self.parent.lock:
                for engine in effect.resets:
                    self.parent.runner.reset_engine(self.vgpu.vgpu_id, int(engine))
                    self.submitted.pop(engine, None)
        if effect.doorbells:
            if not self._sync_gtt():
                return  # the work stays in the ring for the next doorbell
            for engine in effect.doorbells:
                self._doorbell(engine)

    def _sync_gtt(self) -> bool:
        """Shadow the GTT writes not applied yet (waits for the loop's pins: hold no lock); ok?"""
        if not self.gtt_dirty:
            return True
        try:
            self._apply_gtt()
        except VgpusimError as exc:
            _log.warning("GTT update not applied: %s", exc, extra={"vgpu": self.vgpu.uuid})
            return False
        self.gtt_dirty = False
        return True

    def _doorbell(self, engine: Engine) -> None:
        vgpu = self.vgpu
        parent = self.parent
        with parent.lock:
            if vgpu.failsafe is not None:
                return
            ring = vgpu.regs.ring(engine)
            head = self.submitted.get(engine, ring.head)
            if head == ring.tail:
                return
            result = self.auditor.audit(
                RingState(int(engine), ring.start, ring.size, head, ring.tail, ring.hws)
            )
            if result.failsafe:
                self.rejections += 1
                vgpu.enter_failsafe(FailsafeReason.GUEST_ERROR)
                self.parent.runner.flush(vgpu.vgpu_id)
                _log.warning("workload rejected by the audit: %s", result.error, extra={"vgpu": vgpu.uuid})
                return
            try:
                self.parent.runner.submit(vgpu.vgpu_id, result.unwrap())
            except VgpusimError as exc:
                self.rejections += 1
                _log.info("workload not queued: %s", exc, extra={"vgpu": vgpu.uuid})
                return
            self.submitted[engine] = ring.tail
            before = self.workloads
        parent.run_inline(lambda: self.workloads != before)

    # ---- completions (GPU thread, parent lock held) ------------------------------------------

    def on_complete(self, completion: Completion) -> None:
        self.workloads += 1
        self.busy_us += completion.busy_us
        if completion.status is not CompletionStatus.COMPLETED:
            self.hangs += 1
            self.submitted.pop(Engine(completion.engine), None)
        if self.vgpu.regs.apply_completion(completion):
            self.raise_msi()

    def raise_msi(self) -> None:
        """Post an interrupt (from the trap or the GPU thread); counted before the guest can see it."""
        index = IRQ_MSI if self.vgpu.config.msi_enabled else IRQ_INTX
        with self._msi_count_lock:
            self.msis += 1
        try:
            self.port.raise_irq(index, 0, time.monotonic_ns())
        except VgpusimError as exc:
            with self._msi_count_lock:
                self.msis -= 1
            _log.info("interrupt not delivered: %s", exc, extra={"vgpu": self.vgpu.uuid})
