"""The interrupt side of the VFIO device API: IRQ info, ``VFIO_DEVICE_SET_IRQS`` and delivery.

What QEMU's vfio-pci and the kernel do between them for a mediated vGPU, as one state machine per
device: which indices exist (INTx and MSI with one vector each, REQ for release requests; MSI-X
and ERR have none, as KVMGT), the common validation of ``vfio_set_irqs_validate_and_prepare``,
INTx auto-masking until an UNMASK, MSI mask/unmask as no-ops (as KVMGT), loopback triggers, and
delivery of interrupts raised by the device to the bound consumers.

Glossary:
- index: VFIO IRQ index (INTX 0, MSI 1, MSIX 2, ERR 3, REQ 4).
- bound: an index has a trigger consumer (the kernel's eventfd; here a flag per sub-index).
- pending: an INTx raised while masked, delivered on UNMASK.
- sink: the callable that receives a delivered interrupt (the guest and WatchInterrupts streams).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vgpusim.common.errors import InvalidArgument

IRQ_INTX, IRQ_MSI, IRQ_MSIX, IRQ_ERR, IRQ_REQ = 0, 1, 2, 3, 4
NUM_IRQS = 5

# vfio_irq_info.flags
INFO_EVENTFD, INFO_MASKABLE, INFO_AUTOMASKED, INFO_NORESIZE = 1, 2, 4, 8
# vfio_irq_set.flags
DATA_NONE, DATA_BOOL, DATA_EVENTFD = 1, 2, 4
ACTION_MASK, ACTION_UNMASK, ACTION_TRIGGER = 8, 16, 32
_DATA_MASK = DATA_NONE | DATA_BOOL | DATA_EVENTFD
_ACTION_MASK = ACTION_MASK | ACTION_UNMASK | ACTION_TRIGGER


@dataclass(frozen=True, slots=True)
class IrqInfo:
    """``vfio_irq_info`` of one index."""

    index: int
    flags: int
    count: int


IRQ_INFO: tuple[IrqInfo, ...] = (
    IrqInfo(IRQ_INTX, INFO_EVENTFD | INFO_MASKABLE | INFO_AUTOMASKED, 1),
    IrqInfo(IRQ_MSI, INFO_EVENTFD | INFO_NORESIZE, 1),
    IrqInfo(IRQ_MSIX, INFO_EVENTFD | INFO_NORESIZE, 0),
    IrqInfo(IRQ_ERR, INFO_EVENTFD, 0),
    IrqInfo(IRQ_REQ, INFO_EVENTFD, 1),
)


@dataclass(frozen=True, slots=True)
class Interrupt:
    """One delivered interrupt."""

    index: int
    vector: int
    raised_ns: int
    sequence: int


@dataclass(slots=True)
class _IndexState:
    bound: bool = False
    masked: bool = False
    pending: bool = False


@dataclass
class IrqStatistics:
    """Counters of one device's interrupts."""

    delivered: int = 0
    dropped_unbound: int = 0
    masked_pending: int = 0
    by_index: dict[int, int] = field(default_factory=dict)


def irq_info(index: int) -> IrqInfo:
    """``VFIO_DEVICE_GET_IRQ_INFO``; EINVAL for an index the device does not have."""
    if not 0 <= index < NUM_IRQS:
        raise InvalidArgument(
            f"IRQ index {index} out of range (0..{NUM_IRQS - 1})",
            reason="BAD_IRQ_INDEX",
            metadata={"index": str(index)},
        )
    return IRQ_INFO[index]


def _validate(flags: int, index: int, start: int, count: int, data: bytes) -> IrqInfo:
    info = irq_info(index)
    if flags & ~(_DATA_MASK | _ACTION_MASK):
        raise InvalidArgument(f"unknown SET_IRQS flags {flags:#x}", reason="BAD_IRQ_FLAGS")
    data_type, action = flags & _DATA_MASK, flags & _ACTION_MASK
    if data_type not in (DATA_NONE, DATA_BOOL, DATA_EVENTFD) or action not in (
        ACTION_MASK,
        ACTION_UNMASK,
        ACTION_TRIGGER,
    ):
        raise InvalidArgument(
            f"SET_IRQS flags {flags:#x} must hold exactly one data type and one action",
            reason="BAD_IRQ_FLAGS",
        )
    if start >= info.count or start + count > info.count:
        raise InvalidArgument(
            f"IRQ range start={start} count={count} outside index {index} (count {info.count})",
            reason="BAD_IRQ_RANGE",
            metadata={"index": str(index), "irq_count": str(info.count)},
        )
    if data_type != DATA_NONE and len(data) != count:
        raise InvalidArgument(
            f"SET_IRQS data holds {len(data)} entries, count is {count}", reason="BAD_IRQ_DATA"
        )
    return info


class IrqController:
    """The interrupt state of one device, fed by the device and driven by SET_IRQS.

    Thread-safe: the device's interrupt thread calls :meth:`raise_irq` while gRPC handlers call
    :meth:`set_irqs`.  Sinks are called outside the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = [_IndexState() for _ in range(NUM_IRQS)]
        self._sinks: list[Callable[[Interrupt], None]] = []
        self._sequence = 0
        self.stats = IrqStatistics()

    def add_sink(self, sink: Callable[[Interrupt], None]) -> Callable[[], None]:
        """Register a consumer of delivered interrupts; returns its removal function."""
        with self._lock:
            self._sinks.append(sink)

        def remove() -> None:
            with self._lock:
                if sink in self._sinks:
                    self._sinks.remove(sink)

        return remove

    def is_bound(self, index: int) -> bool:
        return self._state[index].bound

    def set_irqs(self, flags: int, index: int, start: int, count: int, data: bytes = b"") -> None:
        """``VFIO_DEVICE_SET_IRQS`` with the kernel's validation and semantics."""
        _validate(flags, index, start, count, data)
        data_type, action = flags & _DATA_MASK, flags & _ACTION_MASK
        st = self._state[index]
        fire = False
        with self._lock:
            if action == ACTION_TRIGGER:
                if data_type == DATA_EVENTFD:
                    st.bound = bool(data[0]) if count else False
                elif count == 0:  # NONE|TRIGGER count 0: disable the index
                    st.bound = st.masked = st.pending = False
                else:
                    fire = data_type == DATA_NONE or bool(data[0])
            elif index == IRQ_INTX:
                selected = count > 0 and (data_type == DATA_NONE or (data_type == DATA_BOOL and data[0]))
                if data_type == DATA_EVENTFD:
                    raise InvalidArgument(
                        "INTx mask/unmask by eventfd is not supported", reason="BAD_IRQ_FLAGS"
                    )
                if selected and action == ACTION_MASK:
                    st.masked = True
                elif selected and action == ACTION_UNMASK:
                    st.masked = False
                    fire, st.pending = st.pending, False
            elif index == IRQ_REQ:
                raise InvalidArgument("the REQ index can only be triggered", reason="BAD_IRQ_FLAGS")
            # MSI mask/unmask: accepted and ignored, as KVMGT does.
        if fire:
            self.raise_irq(index, 0)

    def raise_irq(self, index: int, vector: int = 0, raised_ns: int | None = None) -> bool:
        """The device raised ``index``; deliver it if bound and unmasked. Returns delivered."""
        st = self._state[index]
        with self._lock:
            if not st.bound:
                self.stats.dropped_unbound += 1
                return False
            if index == IRQ_INTX:
                if st.masked:
                    st.pending = True
                    self.stats.masked_pending += 1
                    return False
                st.masked = True  # AUTOMASKED: the user must UNMASK
            self._sequence += 1
            irq = Interrupt(index, vector, raised_ns or time.monotonic_ns(), self._sequence)
            self.stats.delivered += 1
            self.stats.by_index[index] = self.stats.by_index.get(index, 0) + 1
            sinks = list(self._sinks)
        for sink in sinks:
            sink(irq)
        return True
