"""VFIO SET_IRQS validation and semantics (INTx automask, MSI, loopback triggers, disable)."""

import pytest

from vgpusim.common.errors import InvalidArgument
from vgpusim.qemu_frontend.core.irqs import (
    ACTION_MASK,
    ACTION_TRIGGER,
    ACTION_UNMASK,
    DATA_BOOL,
    DATA_EVENTFD,
    DATA_NONE,
    INFO_AUTOMASKED,
    IRQ_INTX,
    IRQ_MSI,
    IRQ_MSIX,
    Interrupt,
    IrqController,
    irq_info,
)


def controller() -> tuple[IrqController, list[Interrupt]]:
    ctl = IrqController()
    seen: list[Interrupt] = []
    ctl.add_sink(seen.append)
    return ctl, seen


def test_irq_info_matches_kvmgt() -> None:
    assert irq_info(IRQ_INTX).flags & INFO_AUTOMASKED
    assert irq_info(IRQ_MSI).count == 1
    assert irq_info(IRQ_MSIX).count == 0
    with pytest.raises(InvalidArgument) as err:
        irq_info(5)
    assert err.value.reason == "BAD_IRQ_INDEX"


@pytest.mark.parametrize(
    ("flags", "index", "start", "count", "reason"),
    [
        (DATA_NONE | ACTION_TRIGGER, 9, 0, 1, "BAD_IRQ_INDEX"),
        (DATA_NONE | DATA_BOOL | ACTION_TRIGGER, IRQ_MSI, 0, 1, "BAD_IRQ_FLAGS"),
        (DATA_NONE | ACTION_MASK | ACTION_TRIGGER, IRQ_MSI, 0, 1, "BAD_IRQ_FLAGS"),
        (DATA_NONE, IRQ_MSI, 0, 1, "BAD_IRQ_FLAGS"),
        (1 << 9 | DATA_NONE | ACTION_TRIGGER, IRQ_MSI, 0, 1, "BAD_IRQ_FLAGS"),
        (DATA_NONE | ACTION_TRIGGER, IRQ_MSI, 1, 1, "BAD_IRQ_RANGE"),
        (DATA_NONE | ACTION_TRIGGER, IRQ_MSI, 0, 2, "BAD_IRQ_RANGE"),
        (DATA_NONE | ACTION_TRIGGER, IRQ_MSIX, 0, 0, "BAD_IRQ_RANGE"),
        (DATA_BOOL | ACTION_TRIGGER, IRQ_MSI, 0, 1, "BAD_IRQ_DATA"),
    ],
)
def test_validation_errors(flags: int, index: int, start: int, count: int, reason: str) -> None:
    ctl, _ = controller()
    with pytest.raises(InvalidArgument) as err:
        ctl.set_irqs(flags, index, start, count)
    assert err.value.reason == reason


def test_unbound_interrupts_are_dropped_and_counted() -> None:
    ctl, seen = controller()
    assert not ctl.raise_irq(IRQ_MSI)
    assert seen == [] and ctl.stats.dropped_unbound == 1


def test_msi_bind_deliver_and_disable() -> None:
    ctl, seen = controller()
    ctl.set_irqs(DATA_EVENTFD | ACTION_TRIGGER, IRQ_MSI, 0, 1, b"\x01")
    assert ctl.raise_irq(IRQ_MSI) and ctl.raise_irq(IRQ_MSI)
    assert [i.sequence for i in seen] == [1, 2]
    ctl.set_irqs(DATA_NONE | ACTION_MASK, IRQ_MSI, 0, 1)  # a no-op, as KVMGT
    assert ctl.raise_irq(IRQ_MSI)
    ctl.set_irqs(DATA_NONE | ACTION_TRIGGER, IRQ_MSI, 0, 0)  # count 0: disable
    assert not ctl.raise_irq(IRQ_MSI)
    assert len(seen) == 3


def test_intx_is_automasked_until_unmask_and_pending_is_delivered() -> None:
    ctl, seen = controller()
    ctl.set_irqs(DATA_EVENTFD | ACTION_TRIGGER, IRQ_INTX, 0, 1, b"\x01")
    assert ctl.raise_irq(IRQ_INTX)
    assert not ctl.raise_irq(IRQ_INTX)  # automasked: pending
    assert len(seen) == 1
    ctl.set_irqs(DATA_NONE | ACTION_UNMASK, IRQ_INTX, 0, 1)
    assert len(seen) == 2  # the pending one arrives on unmask
    ctl.set_irqs(DATA_BOOL | ACTION_UNMASK, IRQ_INTX, 0, 1, b"\x01")
    assert ctl.raise_irq(IRQ_INTX)
    assert len(seen) == 3


def test_loopback_trigger_fires_a_bound_index() -> None:
    ctl, seen = controller()
    ctl.set_irqs(DATA_EVENTFD | ACTION_TRIGGER, IRQ_MSI, 0, 1, b"\x01")
    ctl.set_irqs(DATA_BOOL | ACTION_TRIGGER, IRQ_MSI, 0, 1, b"\x00")
    assert seen == []
    ctl.set_irqs(DATA_NONE | ACTION_TRIGGER, IRQ_MSI, 0, 1)
    assert [i.index for i in seen] == [IRQ_MSI]


def test_sink_removal() -> None:
    ctl = IrqController()
    seen: list[Interrupt] = []
    remove = ctl.add_sink(seen.append)
    ctl.set_irqs(DATA_EVENTFD | ACTION_TRIGGER, IRQ_MSI, 0, 1, b"\x01")
    remove()
    ctl.raise_irq(IRQ_MSI)
    assert seen == []
