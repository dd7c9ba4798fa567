"""`zoomrl eval`: measure a policy on evaluation sets with the iMCoT loop, and compare two reports.

Every question of every file (release or V* / HR-Bench layout, `core.data`) goes through
the rollout actors (`RolloutSession`: one engine per rollout.num_workers, in parallel) with
eval.n trajectories at eval.temperature, scored by the reward package exactly as in training
(rules, then the judge when reward.judge.base_url is set). Multiple-choice options are shuffled
with a fixed seed unless eval.shuffle_options is false.

Outputs, next to REPORT.json: REPORT.txt (the table `report_table` prints) and
REPORT.trajectories.jsonl (one line per trajectory: `zoomrl.records.trajectory_record` plus
`eval_set`, `category` and `prediction`; their images in images/, for `zoomrl view`). Every
figure of the report is a function of those lines (`figures`), so it can be recomputed from them.

The unit is the trajectory: accuracy is the share of trajectories whose answer is right, and its
interval is the Wilson score interval at 95%, which assumes independent trials: exact for
eval.n = 1; with several trajectories per question it is too narrow.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from actors.rollout import Sampling
from core.config import Config
from core.data import DataError, iter_file
from core.options import shuffle_options
from core.types import Group, Sample
from rewards.answer import extract_answer
from rewards.turns import assistant_turns
from zoomrl.records import ImageStore, reward_parts, trajectory_record
from zoomrl.session import RolloutSession

WILSON_Z = 1.959963984540054  # two-sided 95%: the 0.975 quantile of the standard normal
INTERVAL = "Wilson score interval, 95%, over trajectories"


def wilson_interval(correct: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for `correct` successes in `n` trials."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)


@dataclass
class Figures:
    """What a set of trajectories did (a whole run, one file, or one category of it)."""

    trajectories: int
    questions: int
    """Distinct questions (trajectories / eval.n)."""
    correct: int
    """Trajectories whose answer was right (reward part acc = 1)."""
    accuracy: float
    ci_low: float
    """Lower end of the accuracy's Wilson 95% interval."""
    ci_high: float
    tool_calls_per_trajectory: float
    """Tool calls per trajectory, failed ones included."""
    zoom_share: float
    """Share of trajectories with at least one successful zoom (a crop fed back)."""
    grounding_iou: float | None
    """Mean over trajectories that zoomed on a question with ground-truth boxes of their best
    zoom box's IoU with a ground-truth box; None when there are none."""
    grounded_trajectories: int
    """Trajectories that grounding_iou averages over."""
    no_answer: int
    """Trajectories with no complete <answer>...</answer> (scored wrong)."""
    format_errors: int
    """Trajectories that broke the DeepEyes format rule (reward part format = -1)."""
    undecided: int
    """Answers the rules could not read as right or wrong with no judge configured (scored wrong)."""
    judged: int
    """Answers the LLM judge decided."""


def figures(records: list[dict[str, Any]]) -> Figures:
    """The figures of a list of evaluation records (lines of REPORT.trajectories.jsonl)."""
    n = len(records)
    parts = [reward_parts(r) for r in records]
    correct = sum(p.correct for p in parts)
    ious = [p.iou_max for p in parts if p.iou_max is not None]
    low, high = wilson_interval(correct, n)
    return Figures(
        trajectories=n, questions=len({r["sample_id"] for r in records}), correct=correct,
        accuracy=correct / n if n else 0.0, ci_low=low, ci_high=high,
        tool_calls_per_trajectory=sum(len(r["tool_calls"]) for r in records) / n if n else 0.0,
        zoom_share=sum(any(not c["error"] and c["box_original"] is not None for c in r["tool_calls"])
                       for r in records) / n if n else 0.0,
        grounding_iou=sum(ious) / len(ious) if ious else None, grounded_trajectories=len(ious),
        no_answer=sum(r["prediction"] is None for r in records),
        format_errors=sum(p.format < 0 for p in parts),
        undecided=int(sum(p.undecided for p in parts)),
        judged=int(sum(p.judged for p in parts)))


@dataclass
class SetReport:
    """One evaluation file: all its questions, and each category."""

    overall: Figures
    categories: dict[str, Figures]


@dataclass
class EvalReport:
    """REPORT.json."""

    model: str
    files: list[str]
    prompt_style: str
    tools: list[str]
    """Tools offered (tools.enabled): training's zoom-in by default, [] for the no-tool baseline."""
    shuffle_options: bool
    shuffle_seed: int
    n: int
    """Trajectories per question."""
    temperature: float
    interval: str
    """How ci_low / ci_high are computed."""
    overall: Figures
    sets: dict[str, SetReport]
    """By file stem."""
    response_tokens: int
    tokens_per_s: float
    """Sampled tokens per second of generation, over all engines (engine start-up excluded)."""
    generate_s: float
    engine_startup_s: float
    trajectories_file: str


def eval_sampling(cfg: Config) -> Sampling:
    """How evaluation samples: eval.n trajectories at eval.temperature."""
    return Sampling(n=cfg.eval.n, temperature=cfg.eval.temperature)


def eval_config(cfg: Config) -> Config:
    """The config the rollout actors run under: eval.n trajectories at eval.temperature."""
    return eval_sampling(cfg).apply(cfg)


def load_eval_sets(files: list[str], cfg: Config) -> list[tuple[str, Sample]]:
    """(set name, question) for every row of every file, labels checked and options shuffled as
    configured; the first bad row stops with an error naming file, row and column."""
    questions: list[tuple[str, Sample]] = []
    seen_sets: dict[str, str] = {}
    for path in files:
        name = Path(path).stem
        if name in seen_sets:
            raise DataError(f"{path}: evaluation files need distinct names; {seen_sets[name]} is "
                            f"also '{name}'")
        seen_sets[name] = str(path)
        for index, sample in iter_file(path, cfg.data.max_decoded_pixels):
            if isinstance(sample, DataError):
                raise sample
            if cfg.eval.shuffle_options:
                try:
                    sample = shuffle_options(sample, cfg.eval.shuffle_seed)
                except ValueError as err:
                    raise DataError(f"{path}: row {index}, column 'prompt': {err}") from None
            questions.append((name, sample))
    return questions


def category_of(sample: Sample) -> str:
    """The sample's category (extra_info.category / the benchmark's column), else its data_source."""
    return str(sample.extra["category"]) if "category" in sample.extra else sample.data_source


def eval_record(group: Group, index: int, eval_set: str, images: ImageStore) -> dict[str, Any]:
    """A `zoomrl rollout` trajectory record plus what the report groups and counts by."""
    record = trajectory_record(group, index, images)
    record.update(eval_set=eval_set, category=category_of(group.sample),
                  prediction=extract_answer(assistant_turns(record["response_text"])))
    return record


def set_reports(records: list[dict[str, Any]]) -> dict[str, SetReport]:
    """Figures per file and, within it, per category."""
    reports = {}
    for name in sorted({r["eval_set"] for r in records}):
        in_set = [r for r in records if r["eval_set"] == name]
        categories = {c: figures([r for r in in_set if r["category"] == c])
                      for c in sorted({r["category"] for r in in_set})}
        reports[name] = SetReport(overall=figures(in_set), categories=categories)
    return reports


def answer_records(groups: Iterable[Group], questions: list[tuple[str, Sample]], sink: TextIO,
                   images: ImageStore,
                   progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """The evaluation records of the groups answering `questions` (from `load_eval_sets`), each
    also written as a line of `sink`, as the groups finish (`zoomrl eval`, and validation during
    training: zoomrl/validate.py). `images` saves their images: an ImageStore on sink's folder."""
    set_of = {sample.id: name for name, sample in questions}
    records = []
    for done, group in enumerate(groups, start=1):
        for i in range(len(group.trajectories)):
            record = eval_record(group, i, set_of[group.sample.id], images)
            sink.write(json.dumps(record) + "\n")
            records.append(record)
        if progress is not None:
            progress(done, len(questions))
    return records


def run_eval(cfg: Config, model_path: str, files: list[str], out: str | Path,
             progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Evaluate `model_path` on `files`; writes REPORT.json, REPORT.txt and the trajectories."""
    cfg = eval_config(cfg)
    questions = load_eval_sets(files, cfg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    trajectories_file = out.with_suffix(".trajectories.jsonl")
    with RolloutSession(cfg, model_path) as session, open(trajectories_file, "w") as sink:
        records = answer_records(session.groups([s for _, s in questions], "eval"), questions, sink,
                                 ImageStore(trajectories_file.parent), progress)
    report = EvalReport(
        model=model_path, files=[str(f) for f in files], prompt_style=cfg.rollout.prompt_style,
        tools=list(cfg.tools.enabled), shuffle_options=cfg.eval.shuffle_options,
        shuffle_seed=cfg.eval.shuffle_seed, n=cfg.eval.n,
        temperature=cfg.eval.temperature, interval=INTERVAL, overall=figures(records),
        sets=set_reports(records), response_tokens=session.response_tokens,
        tokens_per_s=session.tokens_per_s, generate_s=session.generate_s,
        engine_startup_s=session.startup_s, trajectories_file=str(trajectories_file))
    out.write_text(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    out.with_suffix(".txt").write_text(report_table(dataclasses.asdict(report)))
    return report


def _pct(value: float) -> str:
    return f"{100 * value:5.1f}"


def _row(label: str, f: dict[str, Any]) -> str:
    iou = "   -" if f["grounding_iou"] is None else f"{f['grounding_iou']:.2f}"
    return (f"{label:<28} {f['trajectories']:>5} {_pct(f['accuracy'])}  [{_pct(f['ci_low'])}, "
            f"{_pct(f['ci_high'])}] {f['tool_calls_per_trajectory']:>6.2f} {_pct(f['zoom_share'])} "
            f"{iou:>5} {f['no_answer']:>6} {f['format_errors']:>6} {f['undecided']:>6}")


def report_table(report: dict[str, Any]) -> str:
    """A short human-readable table of a report (as loaded from REPORT.json)."""
    shuffle = f"options shuffled (seed {report['shuffle_seed']})" if report["shuffle_options"] \
        else "options as given"
    lines = [f"model {report['model']}; prompt {report['prompt_style']}; {shuffle}; "
             f"{report['n']} trajectory(ies) per question at temperature {report['temperature']}",
             f"{'set / category':<28} {'n':>5} {'acc %':>5}  {'95% CI (Wilson)':<14} {'tools':>6} "
             f"{'zoom %':>5} {'IoU':>5} {'no ans':>6} {'format':>6} {'undec.':>6}",
             _row("all", report["overall"])]
    for name, set_report in report["sets"].items():
        lines.append(_row(name, set_report["overall"]))
        lines += [_row(f"  {category}", f) for category, f in set_report["categories"].items()]
    lines.append(f"{report['response_tokens']} tokens sampled at {report['tokens_per_s']:.0f} tokens/s "
                 f"({report['generate_s']:.1f} s generating, {report['engine_startup_s']:.1f} s "
                 "starting engines)")
    return "\n".join(lines) + "\n"


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> str:
    """A table of accuracy per file and category in A and B, and the delta B - A in points."""
    def row(label: str, fa: dict | None, fb: dict | None) -> str:
        def cell(f: dict | None) -> str:
            return f"{f['trajectories']:>5} {_pct(f['accuracy'])}" if f else f"{'-':>5} {'-':>5}"
        delta = f"{100 * (fb['accuracy'] - fa['accuracy']):+6.1f}" if fa and fb else f"{'-':>6}"
        return f"{label:<28} {cell(fa)}   {cell(fb)}   {delta}"

    lines = [f"A: {a['model']} ({', '.join(a['files'])})", f"B: {b['model']} ({', '.join(b['files'])})",
             f"{'set / category':<28} {'n A':>5} {'acc A':>5}   {'n B':>5} {'acc B':>5}   {'B - A':>6}",
             row("all", a["overall"], b["overall"])]
    for name in sorted(set(a["sets"]) | set(b["sets"])):
        sa, sb = a["sets"].get(name), b["sets"].get(name)
        lines.append(row(name, sa and sa["overall"], sb and sb["overall"]))
        categories = sorted(set(sa["categories"] if sa else []) | set(sb["categories"] if sb else []))
        for category in categories:
            lines.append(row(f"  {category}", sa and sa["categories"].get(category),
                             sb and sb["categories"].get(category)))
    return "\n".join(lines) + "\n"
