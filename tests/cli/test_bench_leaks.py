"""Resource sampling and leak comparison of the bench's scale figure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vgpusim.cli.bench_leaks import (
    RSS_SLACK_KIB,
    THREAD_SLACK,
    Resources,
    Sample,
    compare,
    count_segments,
    sample,
)


def test_sample_of_this_process(tmp_path: Path) -> None:
    (tmp_path / "seg-a").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    got = sample({"me": os.getpid()}, tmp_path)
    me = got.processes["me"]
    assert me.rss_kib > 0 and me.fds > 0 and me.threads >= 1
    assert got.segments == 1
    assert "me " in got.describe() and "1 segments" in got.describe()


def test_a_missing_shm_dir_has_no_segments(tmp_path: Path) -> None:
    assert count_segments(tmp_path / "absent") == 0


def test_a_gone_process_is_reported() -> None:
    with pytest.raises(ProcessLookupError):
        sample({"ghost": 2**22 + 12345}, Path("/nonexistent"))


def _s(rss: int = 100_000, fds: int = 10, threads: int = 5, segments: int = 0) -> Sample:
    return Sample({"gfx_host": Resources(rss, fds, threads)}, segments)


def test_growth_within_the_slack_is_no_leak() -> None:
    assert compare(_s(), _s(rss=100_000 + RSS_SLACK_KIB, threads=5 + THREAD_SLACK)) == []


def test_every_kind_of_growth_is_named() -> None:
    leaks = compare(_s(), _s(rss=100_000 + RSS_SLACK_KIB + 1, fds=12, threads=6 + THREAD_SLACK, segments=3))
    assert any("gfx_host: +2 file descriptors" in leak for leak in leaks)
    assert any(f"gfx_host: +{THREAD_SLACK + 1} threads" in leak for leak in leaks)
    assert any("gfx_host: RSS +" in leak for leak in leaks)
    assert any("shm: +3 segments" in leak for leak in leaks)


def test_a_process_that_died_is_a_problem() -> None:
    assert compare(_s(), Sample({}, 0)) == ["gfx_host: the process is gone"]
