"""The executor: real bytes for store/fill/copy/compute, busy time, watchdog budget, DMA faults."""

from __future__ import annotations

import random
import struct
import zlib
from functools import reduce

import pytest

from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.core.engine.executor import CostModel, Executor
from vgpusim.gfx_host.core.engine.memory import PAGE_SIZE
from vgpusim.gfx_host.core.engine.testing import EngineRig
from vgpusim.gfx_host.core.engine.workload import AuditedWorkload, Completion, CompletionStatus, DisplayFlip

KiB = 1024


def run(
    rig: EngineRig, *cmds: tuple[int, ...], budget_us: int | None = None, executor: Executor | None = None
) -> Completion:
    wl = rig.submit(*cmds).unwrap()
    return (executor or Executor()).execute(wl, rig.mem, budget_us=budget_us)


def scatter(rig: EngineRig, gm: int, npages: int) -> None:
    """Remap ``npages`` GM pages at ``gm`` onto host pages in reverse order (no two contiguous)."""
    host = rig.mem.host_offset(gm)
    for i in range(npages):
        rig.mem.map(gm + i * PAGE_SIZE, host + (npages - 1 - i) * PAGE_SIZE, PAGE_SIZE)
    assert len(rig.mem.translate(gm, npages * PAGE_SIZE, write=False)) == npages


def test_store_dword_and_seqno(rig: EngineRig) -> None:
    done = run(
        rig,
        c.store_dword(rig.DATA + 4, 0xDEADBEEF),
        c.store_seqno(41),
        c.store_seqno(42, index=5),
        c.user_interrupt(),
    )
    assert done.ok and done.status is CompletionStatus.COMPLETED
    assert rig.mem.read(rig.DATA + 4, 4) == bytes.fromhex("efbeadde")
    assert rig.mem.read(rig.HWSP, 4) == struct.pack("<I", 41)
    assert rig.mem.read(rig.HWSP + 20, 4) == struct.pack("<I", 42)
    assert (done.seqno, done.interrupts, done.ring_head) == (42, 1, rig.tail)
    assert done.bytes_moved == 12


@pytest.mark.parametrize("scattered", [False, True])
@pytest.mark.parametrize(("offset", "size"), [(0, 4), (4, 4096), (PAGE_SIZE - 8, 3 * PAGE_SIZE + 4)])
def test_fill(rig: EngineRig, scattered: bool, offset: int, size: int) -> None:
    if scattered:
        scatter(rig, rig.DATA, 8)
    assert run(rig, c.fill(rig.DATA + offset, size, 0x04030201)).ok
    assert rig.mem.read(rig.DATA + offset, size) == bytes([1, 2, 3, 4]) * (size // 4)
    assert rig.mem.read(rig.DATA + offset + size, 4) == bytes(4)
    assert rig.canary_intact()


@pytest.mark.parametrize("layout", ["contiguous", "scattered src", "scattered both"])
@pytest.mark.parametrize(("src_off", "dst_off", "size"), [(0, 0, 100), (3, PAGE_SIZE - 1, 5 * PAGE_SIZE + 7)])
def test_copy(rig: EngineRig, layout: str, src_off: int, dst_off: int, size: int) -> None:
    src, dst = rig.DATA, rig.HIGH_BASE + 64 * KiB
    if layout != "contiguous":
        scatter(rig, src, 8)
    if layout == "scattered both":
        scatter(rig, dst, 8)
    data = random.Random(size).randbytes(size)
    rig.mem.write(src + src_off, data)
    done = run(rig, c.copy(dst + dst_off, src + src_off, size))
    assert done.ok
    assert rig.mem.read(dst + dst_off, size) == data
    assert done.bytes_moved == 2 * size
    assert rig.canary_intact()


@pytest.mark.parametrize("shift", [-64, 64])
def test_overlapping_copy_is_a_memmove(rig: EngineRig, shift: int) -> None:
    data = bytes(range(256))
    rig.mem.write(rig.DATA + 128, data)
    assert run(rig, c.copy(rig.DATA + 128 + shift, rig.DATA + 128, 256)).ok
    assert rig.mem.read(rig.DATA + 128 + shift, 256) == data


@pytest.mark.parametrize("scattered", [False, True])
@pytest.mark.parametrize("op", list(c.ComputeOp))
def test_compute(rig: EngineRig, scattered: bool, op: c.ComputeOp) -> None:
    size = 5 * PAGE_SIZE + 12
    if scattered:
        scatter(rig, rig.DATA, 8)
    data = random.Random(7).randbytes(size)
    rig.mem.write(rig.DATA + 8, data)
    dst = rig.HIGH_BASE + 4 * KiB
    assert run(rig, c.compute(dst, rig.DATA + 8, size, op)).ok
    words = struct.unpack(f"<{size // 4}I", data)
    expected = {
        c.ComputeOp.CRC32: zlib.crc32(data),
        c.ComputeOp.SUM32: sum(words) & 0xFFFFFFFF,
        c.ComputeOp.XOR32: reduce(lambda a, b: a ^ b, words, 0),
    }[op]
    assert struct.unpack("<I", rig.mem.read(dst, 4))[0] == expected


def test_register_writes_flips_and_interrupts_are_reported(rig: EngineRig) -> None:
    done = run(
        rig,
        c.load_register_imm([(0x2000, 7), (0x7000, 8)]),
        c.display_flip(rig.DATA),
        c.display_flip(rig.HIGH_BASE, plane=c.Plane.CURSOR),
        c.user_interrupt(),
        c.user_interrupt(),
    )
    assert done.register_writes == ((0x2000, 7), (0x7000, 8))
    assert done.flips == (DisplayFlip(0, rig.DATA), DisplayFlip(1, rig.HIGH_BASE))
    assert done.interrupts == 2
    assert done.seqno is None


def test_busy_time_follows_the_cost_model(rig: EngineRig) -> None:
    costs = CostModel(workload_ns=1000, command_ns=0, bytes_per_us=1000)
    ex = Executor(costs)
    assert run(rig, c.spin(500), executor=ex).busy_us == 501
    assert run(rig, c.copy(rig.DATA, rig.HIGH_BASE, 10_000), executor=ex).busy_us == 21
    assert run(rig, c.noop(), executor=ex).busy_us == 1
    with pytest.raises(ValueError, match="bandwidth"):
        CostModel(bytes_per_us=0)


def test_budget_overrun_is_a_hang(rig: EngineRig) -> None:
    ex = Executor()
    done = run(
        rig,
        c.store_seqno(1),
        c.user_interrupt(),
        c.spin(10_000_000),
        c.store_seqno(2),
        c.user_interrupt(),
        budget_us=50_000,
        executor=ex,
    )
    assert done.status is CompletionStatus.HUNG and not done.ok
    assert done.busy_us == 50_000
    assert done.interrupts == 0
    assert done.seqno == 1  # the seqno stops where the hang struck
    assert rig.mem.read(rig.HWSP, 4) == struct.pack("<I", 1)
    assert ex.statistics().hangs == 1


def test_data_moves_that_would_overrun_the_budget_do_not_happen(rig: EngineRig) -> None:
    ex = Executor(CostModel(bytes_per_us=1))
    done = run(rig, c.fill(rig.DATA, 4096, 0xFFFFFFFF), budget_us=100, executor=ex)
    assert done.status is CompletionStatus.HUNG
    assert rig.mem.read(rig.DATA, 4096) == bytes(4096)


def test_page_unmapped_after_audit_is_a_dma_fault(rig: EngineRig) -> None:
    wl = rig.submit(c.store_seqno(5), c.copy(rig.HIGH_BASE, rig.DATA, 64), c.user_interrupt()).unwrap()
    rig.mem.unmap(rig.HIGH_BASE, PAGE_SIZE)
    ex = Executor()
    done = ex.execute(wl, rig.mem)
    assert done.status is CompletionStatus.FAULTED
    assert done.fault is not None and done.fault.gm_addr == rig.HIGH_BASE
    assert done.interrupts == 0
    assert ex.statistics().dma_faults == 1


def test_unaudited_ops_crash_loudly(rig: EngineRig) -> None:
    with pytest.raises(AssertionError):
        Executor().execute(AuditedWorkload(0, ((c.Opcode.BATCH_BUFFER_START, 0, 0),), 0), rig.mem)


def test_statistics(rig: EngineRig) -> None:
    ex = Executor()
    run(rig, c.fill(rig.DATA, 64, 1), c.copy(rig.DATA + 64, rig.DATA, 64), executor=ex)
    stats = ex.statistics()
    assert (stats.workloads, stats.ops, stats.bytes_moved, stats.hangs, stats.dma_faults) == (1, 2, 192, 0, 0)
