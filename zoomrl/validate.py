"""Validation during training: the rollout actors answer held-out questions as `zoomrl eval` does.

Every run.eval_every steps, once the learner has published the step's weights, the driver sends
the questions of run.eval_files (data.test_files, else the synthetic test split, by default) to
the same rollout actors that generate training groups, with `zoomrl eval`'s sampling (eval.n
trajectories at eval.temperature: one greedy answer by default) and its option shuffling. The
requests carry the new policy version, so each actor loads it before starting them; training
groups of the next steps generate alongside and go to the replay queue as usual, while the
validation groups never do: they are the driver's to score and forget (never counted in the queue,
so issued = trained + dropped + pending still holds). The records and figures are
`zoomrl.evaluate`'s (`answer_records`, `figures`), named val/... in the step's figures
(docs/metrics.md), and the trajectories go to `val/step-<k>.trajectories.jsonl` in the run
directory, in `zoomrl eval`'s format.

`validate` takes any `RolloutPool`, so a benchmark can validate its own pool the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Config, ConfigError
from core.data import check_data_files
from core.types import FinishedGroup, Sample
from zoomrl.evaluate import answer_records, eval_sampling, figures, load_eval_sets
from zoomrl.records import ImageStore
from zoomrl.rollout_pool import RolloutPool
from zoomrl.session import pool_groups

PREFIX = "val/"


@dataclass
class Validation:
    """One validation: its figures and the records they are computed from."""

    figures: dict[str, float]
    """val/accuracy, val/accuracy/<category>, val/tool_calls_per_trajectory, val/zoom_share,
    val/grounding_iou (absent when no trajectory zoomed on a question with boxes),
    val/response_tokens (sampled tokens per trajectory), val/n (trajectories) and val/seconds."""
    records: list[dict[str, Any]]
    """One `zoomrl.evaluate.eval_record` per trajectory, as written to the trajectories file."""


def validation_questions(cfg: Config, test_files: list[str]) -> list[tuple[str, Sample]]:
    """(set name, question) to validate on: the first run.eval_max_questions (0 = all) of
    run.eval_files, else of `test_files` (the run's data.test_files or synthetic test split), every
    row read and checked now, so that a bad file stops the run before it starts."""
    check_data_files(list(cfg.run.eval_files), "run.eval_files")  # test_files were, by ensure_data
    files = list(cfg.run.eval_files) or list(test_files)
    if not files:
        raise ConfigError(f"run.eval_every={cfg.run.eval_every} needs held-out files: set run.eval_files "
                          "or data.test_files, or run.eval_every=0")
    questions = load_eval_sets(files, cfg)
    return questions[:cfg.run.eval_max_questions] if cfg.run.eval_max_questions else questions


def validate(pool: RolloutPool, questions: list[tuple[str, Sample]], cfg: Config, out: str | Path,
             group_prefix: str = "val", others: Callable[[FinishedGroup], None] | None = None
             ) -> Validation:
    """Answer `questions` on `pool`'s actors with eval sampling, on the weights last sent to it;
    writes the records to `out` (JSON lines; their images under images/ beside it). Group ids are
    '<group_prefix>-<index>'. Other groups the pool finishes meanwhile go to `others` (see
    `zoomrl.session.pool_groups`)."""
    start = time.perf_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as sink:
        groups = pool_groups(pool, [sample for _, sample in questions], group_prefix, eval_sampling(cfg),
                             others)
        records = answer_records(groups, questions, sink, ImageStore(out.parent))
    return Validation(val_figures(records, time.perf_counter() - start), records)


def val_figures(records: list[dict[str, Any]], seconds: float) -> dict[str, float]:
    """The val/... figures of evaluation records (see `Validation.figures`)."""
    overall = figures(records)
    named = {"accuracy": overall.accuracy, "tool_calls_per_trajectory": overall.tool_calls_per_trajectory,
             "zoom_share": overall.zoom_share, "n": overall.trajectories, "seconds": seconds,
             "response_tokens": sum(r["response_tokens"] for r in records) / max(len(records), 1)}
    if overall.grounding_iou is not None:
        named["grounding_iou"] = overall.grounding_iou
    for category in sorted({r["category"] for r in records}):
        named[f"accuracy/{category}"] = figures([r for r in records if r["category"] == category]).accuracy
    return {PREFIX + name: value for name, value in named.items()}
