"""The micro-benchmarks run and report sane figures (no timing assertions: DESIGN.md §5)."""

from __future__ import annotations

import json

import pytest

from vgpusim.gfx_host.core.engine import bench
from vgpusim.gfx_host.core.engine.scheduler import SchedPolicy


def test_copy_ratio_runs() -> None:
    r = bench.copy_ratio(64 * 1024, iterations=2, rounds=3)
    assert r.size == 64 * 1024 and r.rounds == 3
    assert r.raw_us > 0 and r.engine_us > 0 and r.ratio > 0


@pytest.mark.parametrize("policy", list(SchedPolicy))
def test_fairness_meets_the_goal(policy: SchedPolicy) -> None:
    r = bench.fairness(seconds=10.0 if policy is SchedPolicy.WEIGHTED else 2.0, policy=policy)
    assert len(r.achieved) == 7
    assert r.max_error_points <= 3.0, r
    if policy is not SchedPolicy.FIXED_SHARE:
        assert r.utilisation > 0.99


def test_main_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = bench.main(["--size", "65536", "--rounds", "1", "--seconds", "1", "--policy", "equal-share"])
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"copy", "fairness"}
    assert out["fairness"]["policy"] == "equal-share"
    assert code in (0, 1)
