"""bench anatomy's arithmetic and figure on hand-built spans (the real run: `python -m bench anatomy`;
the spans of real actors and ranks are checked in tests/integration/test_rollout_vllm.py and
test_ranks.py)."""

import pytest

from bench.cases.anatomy import anatomy, draw, lane_figures, summarize, union_seconds
from core.spans import Span


def test_union_counts_overlaps_once():
    assert union_seconds([]) == 0.0
    assert union_seconds([(0, 2), (1, 3), (5, 6)]) == 4.0
    assert union_seconds([(1, 3), (0, 10), (2, 4)]) == 10.0


def test_lane_figures_clip_to_the_step_and_merge_each_name():
    spans = [Span("generate", 0, 4), Span("generate", 2, 6), Span("tool", 3, 5), Span("reward", 9, 12)]
    figures = lane_figures(spans, start=1, end=10)
    assert figures["seconds"] == {"generate": 5.0, "reward": 1.0, "tool": 2.0}
    assert figures["busy_s"] == 6.0  # 1..6 and 9..10


def lanes() -> tuple[dict[str, list[Span]], list[float]]:
    """Two steps ending at 10 and 20 (a warm-up ended at 0); the driver's spans leave 1 s of step 2
    unexplained."""
    driver = [Span("wait for groups", 0, 6), Span("update", 6, 9), Span("publish", 9, 10),
              Span("wait for groups", 10, 15), Span("update", 15, 18), Span("log", 18, 19)]
    rank0 = [Span("collate", 6, 6.5), Span("forward_backward", 6.5, 8), Span("optimizer", 8, 8.5),
             Span("collate", 15, 15.5), Span("forward_backward", 15.5, 17), Span("optimizer", 17, 17.5)]
    rollout = [Span("generate", 0, 5), Span("reward", 5, 6), Span("generate", 10, 14)]
    return {"driver": driver, "learner rank 0": rank0, "rollout 0": rollout}, [0.0, 10.0, 20.0]


def test_each_step_is_explained_by_the_drivers_spans_and_the_update_is_split():
    steps = anatomy(*lanes())
    assert [s["step_s"] for s in steps] == [10.0, 10.0]
    assert [s["explained"] for s in steps] == [1.0, 0.9]
    assert steps[0]["update_s"] == 3.0 and steps[0]["update_in_ranks_s"] == 2.5
    assert steps[0]["update_outside_ranks_s"] == pytest.approx(0.5)
    assert steps[1]["lanes"]["rollout 0"] == {"seconds": {"generate": 4.0}, "busy_s": 4.0}


def test_summary_leaves_out_the_final_step_and_counts_absent_names_as_zero():
    lanes_, ends = lanes()
    ends.append(30.0)  # a third step: the final one
    summary = summarize(anatomy(lanes_, ends))
    assert summary["step_s"]["n"] == 2 and summary["explained"]["min"] == 0.9
    reward = summary["lanes"]["rollout 0"]["seconds"]["reward"]
    assert reward == {"median": 0.5, "min": 0.0, "max": 1.0, "n": 2}


def test_timeline_has_a_panel_per_schedule(tmp_path):
    path = tmp_path / "anatomy.png"
    lanes_, ends = lanes()
    draw(path, {"sync": (lanes_, ends + [30.0]), "async": (lanes_, ends + [30.0])}, last=2)
    assert path.stat().st_size > 10_000
