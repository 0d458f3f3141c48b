"""HOSTILE: a guest that tries to escape its partition, and records how each attempt was contained.

First the attempts the host contains without stopping the vGPU, each followed by a check that the
engine still works:

1. ``gtt_outside_partition``: GTT entries for GM pages just outside the vGPU's low GM (a
   neighbour's or the host's pages) -- contained if they read back 0 (the host ignored them);
2. ``pvinfo_write``: enlarge the partition by writing PVINFO -- contained if it reads back unchanged;
3. ``dma_unmapped_gpa``: map one of its own GM pages to guest-physical addresses that are not RAM
   (the VGA hole, the PCI hole, beyond the end of RAM) and ``FILL`` it -- contained if the fill
   never completes (the host's pin fails, the page goes to scratch, the DMA faults and the engine
   hangs), the engine reset works, and a following store lands;

then one *escape* (parameter ``escape``) that the audit rejects, which puts the vGPU in failsafe:

- ``gm_out_of_partition``: ``STORE_DWORD`` to the first GM page after its low GM range;
- ``batch_out_of_partition``: ``BATCH_BUFFER_START`` to that page;
- ``register_write``: ``LOAD_REGISTER_IMM`` of ``INT_MASK`` (not command-accessible);
- ``ring_beyond_ring``: a ``RING_TAIL`` past the end of the ring;
- ``ring_outside_partition``: ``RING_START`` moved outside the partition, then a doorbell.

The failsafe shows as a request that never completes and an engine reset that does not take
(:class:`~vgpusim.qemu_frontend.guest.driver.DeviceFailsafe`).  A guest cannot issue
VFIO_DEVICE_RESET itself, so the workload records the failsafe and stops (state FINISHED); only
the VMM's device reset (``ResetDevice``) brings the vGPU back.  An attempt that is *not* contained
ends the workload FAILED with ``error`` naming it.

Parameters: ``escape`` (above), ``timeout_ms`` (how long a blocked request may take), ``engine``.

Glossary:
- contained: the host refused the access or confined it to the guest's own pinned pages.
- escape: an access the command audit must reject (it would reach another partition).
"""

from __future__ import annotations

from typing import Final

from vgpusim.common.errors import PermissionDenied
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.core.registers import Engine
from vgpusim.qemu_frontend.core.memory import VGA_HOLE_START
from vgpusim.qemu_frontend.guest.context import ParamValue, WorkloadContext
from vgpusim.qemu_frontend.guest.driver import DeviceFailsafe, GuestDriver
from vgpusim.qemu_frontend.guest.gtt import PAGE

ESCAPES: Final = (
    "gm_out_of_partition",
    "batch_out_of_partition",
    "register_write",
    "ring_beyond_ring",
    "ring_outside_partition",
)
PCI_HOLE_GPA: Final = 0xF000_0000  # below 4 GiB, above lowmem: never RAM
DEFAULTS: Final[dict[str, ParamValue]] = {"escape": ESCAPES[0], "timeout_ms": 500.0, "engine": "rcs"}
MARKER: Final = 0x600D_F00D


def _record(ctx: WorkloadContext, name: str, contained: bool, detail: str) -> None:
    ctx.stats.add(attempts=1, contained=int(contained))
    ctx.stats.note(f"{name}: {'contained' if contained else 'NOT CONTAINED'} ({detail})")
    ctx.publish()
    if not contained:
        raise PermissionDenied(
            f"hostile attempt {name} was not contained: {detail}", reason="ESCAPE_NOT_CONTAINED"
        )


def _engine_works(d: GuestDriver, engine: Engine, timeout: float) -> bool:
    """Store a marker through the GPU and read it back from guest RAM."""
    assert d.scratch is not None
    d.env.write_u32(d.scratch.gpa, 0)
    if not d.wait(d.submit(engine, c.pack(c.store_dword(d.scratch.gm, MARKER))), timeout):
        return False
    return d.env.read_u32(d.scratch.gpa) == MARKER


def _outside_pages(d: GuestDriver) -> list[int]:
    low = d.info.low_gm
    pages = [low.end]
    if low.base >= PAGE:
        pages.append(low.base - PAGE)
    return [gm for gm in pages if gm + PAGE <= d.info.gm_total and not d.info.owns(gm, PAGE)]


def _gtt_outside_partition(ctx: WorkloadContext, engine: Engine, timeout: float) -> None:
    d = ctx.driver
    assert d.scratch is not None
    pages = _outside_pages(d)
    for gm in pages:
        d.gtt.write_entry(gm, d.scratch.gpa)
    leaked = [gm for gm in pages if d.gtt.read_entry(gm) != 0]
    works = _engine_works(d, engine, timeout)
    detail = f"the host ignored {len(pages)} GTT entries" if not leaked else f"entries stored at {leaked}"
    _record(ctx, "gtt_outside_partition", not leaked and works, detail)


def _pvinfo_write(ctx: WorkloadContext) -> None:
    d = ctx.driver
    before = d.read_reg(r.PV_LOW_GM_SIZE, 8)
    d.write_reg(r.PV_LOW_GM_SIZE, before * 2, 8)
    d.write_reg(r.PV_LOW_GM_BASE, 0, 8)
    after = d.read_reg(r.PV_LOW_GM_SIZE, 8)
    base = d.read_reg(r.PV_LOW_GM_BASE, 8)
    ok = after == before and base == d.info.low_gm.base
    _record(ctx, "pvinfo_write", ok, "PVINFO is read-only" if ok else f"PVINFO size now {after:#x}")


def _dma_unmapped_gpa(ctx: WorkloadContext, engine: Engine, timeout: float) -> None:
    d = ctx.driver
    ram_end = max(reg.gpa + reg.size for reg in d.env.regions)  # the first GPA above all RAM
    targets = [VGA_HOLE_START, PCI_HOLE_GPA, ram_end]
    page = d.map_buffer("hostile-dma", PAGE)
    for gpa in targets:
        d.gtt.write_entry(page.gm, gpa)
        completed = d.wait(d.submit(engine, c.pack(c.fill(page.gm, PAGE, 0xDEAD_BEEF))), timeout)
        works = _engine_works(d, engine, timeout)
        detail = f"fill through GPA {gpa:#x}: {'completed' if completed else 'faulted, engine reset'}"
        _record(ctx, "dma_unmapped_gpa", not completed and works, detail)
    d.gtt.write_entry(page.gm, page.gpa)


def _escape(ctx: WorkloadContext, engine: Engine, timeout: float) -> None:
    d = ctx.driver
    escape = ctx.params.text("escape", choices=ESCAPES)
    outside = d.info.low_gm.end
    ring = d.ring(engine)
    seqno: int | None = None
    if escape == "gm_out_of_partition":
        seqno = d.submit(engine, c.pack(c.store_dword(outside, MARKER)))
    elif escape == "batch_out_of_partition":
        seqno = d.submit(engine, c.pack(c.batch_buffer_start(outside)))
    elif escape == "register_write":
        seqno = d.submit(engine, c.pack(c.load_register_imm([(r.INT_MASK, 0)])))
    elif escape == "ring_beyond_ring":
        d.write_reg(r.ring_reg(engine, r.RING_TAIL), ring.size + 64)
    else:
        d.write_reg(r.ring_reg(engine, r.RING_START_LO), outside, 8)
        d.env.write_ram(ring.buffer.gpa + ring.tail, c.pack(c.noop(), c.noop()))
        d.write_reg(r.ring_reg(engine, r.RING_TAIL), (ring.tail + 8) % ring.size)
    try:
        if seqno is not None:
            completed = d.wait(seqno, timeout)
            if completed:
                _record(ctx, escape, False, "the request completed")
            _engine_works(d, engine, timeout)
        else:
            d.env.wait_irq(timeout)
            d.reset_engine(engine)
        _record(ctx, escape, False, "the vGPU still executes after the escape")
    except DeviceFailsafe:
        ctx.stats.mark_failsafe()
        _record(ctx, escape, True, "rejected by the command audit; vGPU in failsafe until a device reset")


def run_hostile(ctx: WorkloadContext) -> None:
    """Every attempt in order; the escape last (it ends the vGPU's service until a device reset)."""
    d = ctx.driver
    d.init()
    engine = ctx.engine()
    timeout = ctx.params.number("timeout_ms", lo=1.0) / 1000
    _gtt_outside_partition(ctx, engine, timeout)
    _pvinfo_write(ctx)
    _dma_unmapped_gpa(ctx, engine, timeout)
    _escape(ctx, engine, timeout)
    ctx.stats.note("failsafe: the guest cannot reset the device itself; stopping (the VMM must reset it)")
