"""The command audit: every rejection reason, batch shadowing (TOCTOU), nesting, hostile streams."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vgpusim.common.errors import InvalidArgument, VgpusimError
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.core.engine.audit import REASON_ERRNO, AuditLimits, AuditReason, CommandRejected
from vgpusim.gfx_host.core.engine.executor import Executor
from vgpusim.gfx_host.core.engine.memory import PAGE_SIZE
from vgpusim.gfx_host.core.engine.testing import EngineRig as Rig

R = AuditReason


def test_ring_commands_become_ops(rig: Rig) -> None:
    res = rig.submit(
        c.noop(),
        c.store_dword(rig.DATA, 5),
        c.store_seqno(9, index=2),
        c.load_register_imm([(0x2000, 1), (0x2004, 2)]),
        c.display_flip(rig.DATA, plane=c.Plane.CURSOR),
        c.spin(10),
        c.fill(rig.DATA, 8, 0xAB),
        c.copy(rig.DATA + 8, rig.HIGH_BASE, 16),
        c.compute(rig.DATA, rig.DATA, 64, c.ComputeOp.SUM32),
        c.user_interrupt(),
    )
    assert not res.failsafe
    wl = res.unwrap()
    assert wl.ops == (
        (c.Opcode.STORE_DWORD, rig.DATA, 5),
        (c.Opcode.STORE_SEQNO, rig.HWSP + 8, 9),
        (c.Opcode.LOAD_REGISTER_IMM, 0x2000, 1, 0x2004, 2),
        (c.Opcode.DISPLAY_FLIP, 1, rig.DATA),
        (c.Opcode.SPIN, 10),
        (c.Opcode.FILL, rig.DATA, 8, 0xAB),
        (c.Opcode.COPY, rig.DATA + 8, rig.HIGH_BASE, 16),
        (c.Opcode.COMPUTE, rig.DATA, rig.DATA, 64, c.ComputeOp.SUM32),
        (c.Opcode.USER_INTERRUPT,),
    )
    assert (wl.engine, wl.ring_head, wl.commands, wl.batches) == (0, rig.tail, 10, 0)
    stats = rig.auditor.statistics()
    assert (stats.workloads, stats.rejected, stats.commands) == (1, 0, 10)


def test_empty_ring_is_an_empty_workload(rig: Rig) -> None:
    wl = rig.auditor.audit(rig.ring(64, 64)).unwrap()
    assert wl.ops == ()
    assert wl.ring_head == 64


def test_ring_wraps(rig: Rig) -> None:
    rig.tail = rig.RING_SIZE - 8
    res = rig.submit(c.store_dword(rig.DATA, 1), c.user_interrupt())
    assert rig.tail == 12
    assert res.unwrap().ops[0] == (c.Opcode.STORE_DWORD, rig.DATA, 1)


def test_batches_are_inlined_in_order(rig: Rig) -> None:
    first, second = rig.BATCH, rig.BATCH + PAGE_SIZE
    rig.mem.write(
        first,
        c.pack(
            c.store_dword(rig.DATA, 2),
            c.batch_buffer_start(second, second_level=True),
            c.store_dword(rig.DATA, 4),
            c.batch_buffer_end(),
        ),
    )
    rig.mem.write(
        second, c.pack(c.store_dword(rig.DATA, 3), c.batch_buffer_end(), c.store_dword(rig.DATA, 99))
    )
    wl = rig.submit(
        c.store_dword(rig.DATA, 1), c.batch_buffer_start(first), c.store_dword(rig.DATA, 5)
    ).unwrap()
    assert [op[2] for op in wl.ops] == [1, 2, 3, 4, 5]
    assert wl.batches == 2
    assert wl.shadow_bytes > 0


def test_batch_spanning_pages_and_long_batches(rig: Rig) -> None:
    start = rig.BATCH + PAGE_SIZE - 8  # the first command straddles a page boundary
    body = [c.store_dword(rig.DATA, i) for i in range(1000)]  # ~16 KiB: several reads
    rig.mem.write(start, c.pack(*body, c.batch_buffer_end()))
    wl = rig.submit(c.batch_buffer_start(start)).unwrap()
    assert [op[2] for op in wl.ops] == list(range(1000))


def test_batch_is_copied_before_execution(rig: Rig) -> None:
    rig.mem.write(rig.BATCH, c.pack(c.fill(rig.DATA, 16, 0x11111111), c.batch_buffer_end()))
    wl = rig.submit(c.batch_buffer_start(rig.BATCH)).unwrap()
    # the guest rewrites its batch (and ring) after the audit: the audited copy is what runs
    rig.mem.write(rig.BATCH, c.pack(c.fill(rig.DATA, 16, 0x22222222), c.batch_buffer_end()))
    rig.mem.write(rig.RING, c.pack(c.fill(rig.DATA, 16, 0x33333333)))
    assert Executor().execute(wl, rig.mem).ok
    assert rig.mem.read(rig.DATA, 16) == b"\x11" * 16


def bad_range_copy(r: Rig) -> tuple[int, ...]:
    return c.copy(r.DATA, r.LOW_BASE + r.LOW_SIZE - 8, 16)  # crosses the end of low GM


CASES: list[tuple[str, AuditReason, Callable[[Rig], object]]] = [
    ("unknown opcode", R.UNKNOWN_OPCODE, lambda r: r.submit((0xFF00_0000,))),
    ("bad length", R.BAD_COMMAND_LENGTH, lambda r: r.submit((c.header(c.Opcode.COPY, 4), 0, 0, 0, 0))),
    ("odd LRI", R.BAD_COMMAND_LENGTH, lambda r: r.submit((c.header(c.Opcode.LOAD_REGISTER_IMM, 3), 0, 0, 0))),
    ("truncated", R.TRUNCATED_COMMAND, lambda r: r.submit(c.copy(r.DATA, r.DATA, 4)[:4])),
    ("reserved flags", R.INVALID_OPERAND, lambda r: r.submit((c.header(c.Opcode.NOOP, 0, 1 << 20),))),
    (
        "compute op",
        R.INVALID_OPERAND,
        lambda r: r.submit((c.header(c.Opcode.COMPUTE, 5, 3 << 8), r.DATA, 0, r.DATA, 0, 4)),
    ),
    (
        "flip plane",
        R.INVALID_OPERAND,
        lambda r: r.submit((c.header(c.Opcode.DISPLAY_FLIP, 2, 2 << 8), r.DATA, 0)),
    ),
    ("store misaligned", R.MISALIGNED, lambda r: r.submit(c.store_dword(r.DATA + 2, 0))),
    ("fill size", R.MISALIGNED, lambda r: r.submit(c.fill(r.DATA, 6, 0))),
    ("flip base", R.MISALIGNED, lambda r: r.submit(c.display_flip(r.DATA + 64))),
    ("batch misaligned", R.MISALIGNED, lambda r: r.submit(c.batch_buffer_start(r.BATCH + 2))),
    ("status page", R.MISALIGNED, lambda r: r.submit(c.store_seqno(1), status_page=r.HWSP + 4)),
    ("host GM", R.ADDRESS_OUT_OF_PARTITION, lambda r: r.submit(c.store_dword(0x1000, 0))),
    ("across range end", R.ADDRESS_OUT_OF_PARTITION, lambda r: r.submit(bad_range_copy(r))),
    ("copy source", R.ADDRESS_OUT_OF_PARTITION, lambda r: r.submit(c.copy(r.DATA, 0x0400_0000, 4))),
    ("64-bit address", R.ADDRESS_OUT_OF_PARTITION, lambda r: r.submit(c.store_dword(r.DATA | 1 << 40, 0))),
    ("compute dst", R.ADDRESS_OUT_OF_PARTITION, lambda r: r.submit(c.compute(0x2000_0000, r.DATA, 4))),
    ("hwsp outside", R.ADDRESS_OUT_OF_PARTITION, lambda r: r.submit(c.store_seqno(1), status_page=0x1000)),
    ("batch outside", R.ADDRESS_OUT_OF_PARTITION, lambda r: r.submit(c.batch_buffer_start(0x1000))),
    ("ring outside", R.ADDRESS_OUT_OF_PARTITION, lambda r: r.submit(c.noop(), base=0x0700_0000)),
    ("too large", R.SURFACE_TOO_LARGE, lambda r: r.submit(c.fill(r.DATA, 36 * 1024 * 1024 + 4, 0))),
    ("end in ring", R.BATCH_NESTING, lambda r: r.submit(c.batch_buffer_end())),
    (
        "ring to 2nd level",
        R.BATCH_NESTING,
        lambda r: r.submit(c.batch_buffer_start(r.BATCH, second_level=True)),
    ),
    ("chaining", R.BATCH_NESTING, lambda r: batch_then(r, c.batch_buffer_start(r.BATCH + 64))),
    (
        "start in 2nd level",
        R.BATCH_NESTING,
        lambda r: nested(r, c.batch_buffer_start(r.BATCH + 64, second_level=True)),
    ),
    (
        "no end",
        R.BATCH_UNTERMINATED,
        lambda r: r.submit(c.batch_buffer_start(r.HIGH_BASE + r.HIGH_SIZE - 64)),
    ),
    (
        "LRI not allowed",
        R.REGISTER_NOT_ALLOWED,
        lambda r: r.submit(c.load_register_imm([(0x2000, 0), (0x3000, 1)])),
    ),
    ("LRI misaligned", R.REGISTER_NOT_ALLOWED, lambda r: r.submit(c.load_register_imm([(0x2001, 0)]))),
    ("head past size", R.BAD_RING, lambda r: r.auditor.audit(r.ring(r.RING_SIZE, 0))),
    ("tail misaligned", R.BAD_RING, lambda r: r.auditor.audit(r.ring(0, 6))),
    ("size", R.BAD_RING, lambda r: r.auditor.audit(r.ring(0, 0, size=PAGE_SIZE + 4))),
    ("huge ring", R.BAD_RING, lambda r: r.auditor.audit(r.ring(0, 0, size=4 * 1024 * 1024))),
    ("base", R.BAD_RING, lambda r: r.auditor.audit(r.ring(0, 0, base=r.RING + 64))),
    ("ring unmapped", R.DMA_FAULT, lambda r: unmapped(r, r.RING, c.noop())),
    ("batch unmapped", R.DMA_FAULT, lambda r: unmapped(r, r.BATCH, c.batch_buffer_start(r.BATCH))),
]


def unmapped(r: Rig, page: int, *cmds: tuple[int, ...]) -> object:
    head, tail = r.write_ring(c.pack(*cmds))
    r.mem.unmap(page, PAGE_SIZE)
    return r.auditor.audit(r.ring(head, tail))


def batch_then(r: Rig, *inner: tuple[int, ...]) -> object:
    r.mem.write(r.BATCH, c.pack(*inner, c.batch_buffer_end()))
    return r.submit(c.batch_buffer_start(r.BATCH))


def nested(r: Rig, *inner: tuple[int, ...]) -> object:
    r.mem.write(r.BATCH + 4096, c.pack(*inner, c.batch_buffer_end()))
    return batch_then(r, c.batch_buffer_start(r.BATCH + 4096, second_level=True))


@pytest.mark.parametrize(("case", "reason", "run"), CASES, ids=[x[0] for x in CASES])
def test_every_rejection_reason(
    rig: Rig, case: str, reason: AuditReason, run: Callable[[Rig], object]
) -> None:
    res = run(rig)
    assert getattr(res, "failsafe") is True  # noqa: B009
    err = getattr(res, "error")  # noqa: B009
    assert isinstance(err, CommandRejected)
    assert isinstance(err, InvalidArgument)
    assert err.reason == reason.value
    assert err.errno == REASON_ERRNO[reason]
    assert rig.auditor.statistics().rejections == {reason.value: 1}
    assert rig.auditor.statistics().workloads == 0
    with pytest.raises(CommandRejected):
        getattr(res, "unwrap")()  # noqa: B009


def test_all_reasons_are_covered() -> None:
    assert {reason for _, reason, _ in CASES} == set(AuditReason) - {R.WORKLOAD_TOO_LARGE}


def test_workload_limits() -> None:
    r = Rig(limits=AuditLimits(max_commands=4))
    assert r.submit(*[c.noop()] * 4).workload is not None
    assert r.submit(*[c.noop()] * 5).error is not None
    r = Rig(limits=AuditLimits(max_shadow_bytes=64))
    r.mem.write(r.BATCH, c.pack(*[c.noop()] * 32, c.batch_buffer_end()))
    res = r.submit(c.batch_buffer_start(r.BATCH), c.batch_buffer_start(r.BATCH))
    assert res.error is not None and res.error.reason == "WORKLOAD_TOO_LARGE"
    assert res.error.errno == errno.E2BIG
    r = Rig(limits=AuditLimits(max_batch_size=64))
    r.mem.write(r.BATCH, c.pack(*[c.noop()] * 32, c.batch_buffer_end()))
    res = r.submit(c.batch_buffer_start(r.BATCH))
    assert res.error is not None and res.error.reason == "BATCH_UNTERMINATED"


def test_errnos_follow_gvt() -> None:
    assert REASON_ERRNO[R.UNKNOWN_OPCODE] == errno.EBADRQC
    assert REASON_ERRNO[R.ADDRESS_OUT_OF_PARTITION] == errno.EFAULT
    assert set(REASON_ERRNO) == set(AuditReason)


def test_rejection_names_the_offending_command(rig: Rig) -> None:
    rig.mem.write(rig.BATCH, c.pack(c.noop(), c.noop(), c.store_dword(0x1000, 0), c.batch_buffer_end()))
    err = rig.submit(c.noop(), c.batch_buffer_start(rig.BATCH)).error
    assert err is not None
    assert err.metadata["gm_addr"] == hex(rig.BATCH + 8)
    assert err.metadata["level"] == "1"
    assert err.metadata["errno"] == "EFAULT"


# ---- hostile streams -----------------------------------------------------------------------

INSIDE = st.one_of(
    st.integers(Rig.LOW_BASE + 64 * 1024, Rig.LOW_BASE + Rig.LOW_SIZE),
    st.integers(Rig.HIGH_BASE, Rig.HIGH_BASE + Rig.HIGH_SIZE),
).map(lambda a: a & ~3)
EDGES = st.one_of(
    st.integers(Rig.LOW_BASE - 64, Rig.LOW_BASE + 64),
    st.integers(Rig.LOW_BASE + Rig.LOW_SIZE - 64, Rig.LOW_BASE + Rig.LOW_SIZE + 64),
    st.integers(Rig.HIGH_BASE - 64, Rig.HIGH_BASE + 64),
    st.integers(Rig.HIGH_BASE + Rig.HIGH_SIZE - 64, Rig.HIGH_BASE + Rig.HIGH_SIZE + 64),
    st.integers(0, c.U64),
    st.sampled_from([0, Rig.BATCH, Rig.BATCH + 256, Rig.DATA, Rig.HWSP, Rig.RING]),
)
ADDRS = st.one_of(INSIDE, INSIDE, INSIDE, EDGES)
SIZES = st.one_of(
    st.integers(0, 1024).map(lambda n: 4 * n),
    st.integers(0, 1024).map(lambda n: 4 * n),
    st.integers(0, c.U32),
    st.sampled_from([Rig.LOW_SIZE, Rig.HIGH_SIZE, 1]),
)
HOSTILE = st.one_of(
    st.builds(lambda a, s: c.batch_buffer_start(a, second_level=s), ADDRS, st.booleans()),
    st.builds(c.store_dword, ADDRS, st.integers(0, c.U32)),
    st.builds(c.fill, ADDRS, SIZES, st.integers(0, c.U32)),
    st.builds(c.copy, ADDRS, ADDRS, SIZES),
    st.builds(c.compute, ADDRS, ADDRS, SIZES, st.sampled_from(c.ComputeOp)),
    st.builds(lambda a, p: c.display_flip(a & ~0xFFF, plane=p), ADDRS, st.sampled_from(c.Plane)),
    st.builds(
        c.load_register_imm,
        st.lists(
            st.tuples(st.sampled_from([0x2000, 0x2004, 0x7000, 0x2000, 0x3000, 2]), st.integers(0, 9)),
            min_size=1,
            max_size=3,
        ),
    ),
    st.builds(lambda v, i: c.store_seqno(v, index=i), st.integers(0, c.U32), st.integers(0, 1023)),
    st.sampled_from([c.noop(), c.user_interrupt(), c.batch_buffer_end(), c.spin(5)]),
    st.lists(st.integers(0, c.U32), min_size=1, max_size=4).map(tuple),  # raw junk
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ring=st.lists(HOSTILE, max_size=12),
    batch=st.lists(HOSTILE, max_size=12),
    batch2=st.lists(HOSTILE, max_size=6),
    status_page=ADDRS,
    unmap=st.sampled_from([None, None, Rig.LOW_BASE + 128 * 1024, Rig.HIGH_BASE + 128 * 1024]),
)
def test_hostile_streams_stay_inside_the_partition(
    ring: list[tuple[int, ...]],
    batch: list[tuple[int, ...]],
    batch2: list[tuple[int, ...]],
    status_page: int,
    unmap: int | None,
) -> None:
    rig = Rig(record=True)
    rig.mem.write(rig.BATCH, c.pack(*batch)[: 64 * 1024])
    rig.mem.write(rig.BATCH + 256, c.pack(*batch2)[: 64 * 1024])
    data = c.pack(*ring)[: rig.RING_SIZE - 4]
    head, tail = rig.write_ring(data)
    executor = Executor()
    try:
        res = rig.auditor.audit(rig.ring(head, tail, status_page=status_page))
        event(f"audit: {res.error.reason if res.error else 'ok'}")
        if res.workload is not None:
            if unmap is not None:
                rig.mem.unmap(unmap, 256 * 1024)  # pages go away between audit and execution
            done = executor.execute(res.workload, rig.mem, budget_us=50_000)
            event(f"executed: {done.status.value}, {'with' if res.workload.ops else 'no'} ops")
    except VgpusimError:
        pass  # domain errors are allowed; anything else fails the test
    for a in rig.mem.accesses:
        assert rig.partition.contains(a.gm_addr, a.size), a
    assert rig.canary_intact()
