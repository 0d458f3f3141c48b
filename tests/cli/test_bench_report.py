"""The shape of ``vgpusim bench`` output: goals, --only resolution, JSON and table (no timings)."""

from __future__ import annotations

import json

import pytest

from vgpusim.cli.bench_report import (
    FIGURE_KEYS,
    GOALS,
    GROUPS,
    Collected,
    Figure,
    Goal,
    failed,
    machine_info,
    render_json,
    render_table,
    select,
    with_goal_text,
)

EXPECTED_KEYS = {
    "dma_copy_ratio",
    "irq_roundtrip_p50_ratio",
    "irq_roundtrip_p99_ratio",
    "mmio_trap_p50_ratio",
    "map_rpc_ratio",
    "map_throughput_per_s",
    "pin_throughput_pages_per_s",
    "lifecycle_p50_ms",
    "fairness_max_error_points",
    "scale_throughput_ratio",
}


def _all_figures() -> list[Figure]:
    return [
        Figure(key, 1.0 if key.endswith("_ratio") else 10.0, unit="u", measured=2.0, baseline=2.0)
        for key in FIGURE_KEYS
    ]


def test_every_figure_of_the_issue_has_a_goal_and_exactly_one_group() -> None:
    assert set(FIGURE_KEYS) == EXPECTED_KEYS
    grouped = [k for keys in GROUPS.values() for k in keys]
    assert sorted(grouped) == sorted(FIGURE_KEYS)


@pytest.mark.parametrize(
    ("goal", "value", "met"),
    [
        (Goal(">=", 0.7, ""), 0.7, True),
        (Goal(">=", 0.7, ""), 0.69, False),
        (Goal("<=", 1.5, ""), 1.5, True),
        (Goal("<=", 1.5, ""), 1.51, False),
    ],
)
def test_goal_met(goal: Goal, value: float, met: bool) -> None:
    assert goal.met(value) is met


def test_select_everything_by_default() -> None:
    groups, keys = select(None)
    assert groups == list(GROUPS)
    assert keys == list(FIGURE_KEYS)


def test_select_groups_keys_and_commas_in_canonical_order() -> None:
    groups, keys = select(["scale", "irq_roundtrip_p99_ratio,map"])
    assert groups == ["irq", "map", "scale"]
    assert keys == ["irq_roundtrip_p99_ratio", "map_rpc_ratio", "scale_throughput_ratio"]


def test_select_a_group_reports_all_its_figures() -> None:
    assert select(["irq"])[1] == ["irq_roundtrip_p50_ratio", "irq_roundtrip_p99_ratio"]


def test_select_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown figure 'nope'.*dma_copy_ratio"):
        select(["nope"])


def test_select_empty_names_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        select([","])


def test_json_has_exactly_the_figure_keys_and_machine() -> None:
    doc = json.loads(render_json(_all_figures(), machine_info(quick=True)))
    assert set(doc) == EXPECTED_KEYS | {"machine"}
    for key in EXPECTED_KEYS:
        assert set(doc[key]) == {"value", "baseline", "goal"}
        assert isinstance(doc[key]["value"], float)
        assert doc[key]["baseline"] is None or isinstance(doc[key]["baseline"], float)
        assert isinstance(doc[key]["goal"], str) and doc[key]["goal"]
    assert doc["machine"]["cores"] >= 1
    assert doc["machine"]["python"].count(".") == 2
    assert doc["machine"]["quick"] is True


def test_json_of_a_subset_has_only_those_keys() -> None:
    figures = [Figure("map_rpc_ratio", 1.1, unit="us", measured=1.1, baseline=1.0)]
    doc = json.loads(render_json(figures, machine_info(quick=False)))
    assert set(doc) == {"map_rpc_ratio", "machine"}
    assert doc["map_rpc_ratio"] == {"value": 1.1, "baseline": 1.0, "goal": "<= 1.3x"}


def test_a_failed_figure_has_a_null_value_and_the_error() -> None:
    (fig,) = failed("map", "needs iommu_type2")
    assert fig.status == "FAIL" and not fig.met
    doc = fig.as_json()
    assert doc["value"] is None and doc["baseline"] is None
    assert doc["error"] == "needs iommu_type2"


def test_a_problem_fails_a_figure_whose_value_meets_the_goal() -> None:
    fig = Figure("scale_throughput_ratio", 1.0, problems=("gfx_host: +3 file descriptors",))
    assert fig.status == "MISS"
    assert "file descriptors" in fig.as_json()["error"]


def test_figure_status_follows_the_goal() -> None:
    assert Figure("lifecycle_p50_ms", 50.0, unit="ms").status == "ok"
    assert Figure("lifecycle_p50_ms", 150.0, unit="ms").status == "MISS"


def test_non_finite_values_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        Figure("dma_copy_ratio", float("nan"))


def test_with_goal_text_keeps_the_limit() -> None:
    fig = with_goal_text(Figure("scale_throughput_ratio", 0.9), ">= 0.8x, no leak after 1,000 cycles")
    assert fig.as_json()["goal"] == ">= 0.8x, no leak after 1,000 cycles"
    assert fig.the_goal.limit == GOALS["scale_throughput_ratio"].limit
    assert fig.met


def test_table_has_a_row_per_figure_with_value_baseline_ratio_and_goal() -> None:
    figures = [
        Figure("irq_roundtrip_p50_ratio", 1.25, unit="us", measured=62.5, baseline=50.0, notes=("n",)),
        Figure("map_throughput_per_s", 75_000.0, unit="/s"),
        *failed("lifecycle", "needs qemu_frontend"),
    ]
    text = render_table(figures, machine_info(quick=True))
    lines = text.splitlines()
    assert lines[0].split() == ["figure", "measured", "baseline", "ratio", "goal", "result"]
    irq = next(line for line in lines if line.startswith("irq_roundtrip_p50_ratio"))
    assert "62.5 us" in irq and "50.0 us" in irq and "1.25" in irq and "<= 1.5x" in irq and "ok" in irq
    throughput = next(line for line in lines if line.startswith("map_throughput_per_s"))
    assert "75,000 /s" in throughput and ">= 50,000/s" in throughput
    life = next(line for line in lines if line.startswith("lifecycle_p50_ms"))
    assert life.rstrip().endswith("FAIL")
    assert "  lifecycle_p50_ms: ERROR: needs qemu_frontend" in lines
    assert "  irq_roundtrip_p50_ratio: n" in lines
    assert lines[-1].startswith("2/3 goals met") and "--quick" in lines[-1]


def test_collected_keeps_only_the_keys_asked_for() -> None:
    collected = Collected(["irq_roundtrip_p99_ratio"])
    collected.add(failed("irq", "x"))
    assert [f.key for f in collected.figures] == ["irq_roundtrip_p99_ratio"]
