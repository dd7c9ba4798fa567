"""`zoomrl curate`: the DeepEyes data curation, three filters over a training file.

    rows --labels--> readable, consistent rows --difficulty--> rows solved sometimes
         --perception--> rows whose ground-truth crop helps (rows without boxes pass) --> kept

- labels: every row is read (release or V* / HR-Bench layout) and checked as every command
  checks it (`core.data.check_labels`: options present for a letter answer, answer among them,
  images decodable, boxes inside the image, ids unique), then standardized (answer as its option letter,
  texts stripped). The paper lists this stage second; it runs first here because a row that
  cannot be read cannot be sampled, and it costs no generation.
- difficulty: curate.k trajectories per row with the model (the iMCoT loop of the config, at
  rollout.temperature); rows solved 0 or k times out of k are dropped (nothing to learn from a
  group whose rewards are all equal).
- perception: for rows with ground-truth boxes, k more trajectories where the image is replaced
  by the crop of the boxes (widened by curate.crop_context); the row is kept only when the crop
  is solved MORE often than the full image was in the difficulty stage.

Resumable: each sampled verdict is appended to OUT.progress.jsonl (keyed by stage and row id,
after a header line with the settings) as soon as its group finishes; a rerun with the same
settings skips them, and starts no engine when nothing is left. Writes the kept rows to OUT in
the release format (`core.data.write_samples`) and OUT.report.json: the counts per stage and
every dropped row with its reason. While a stage samples it shows its progress (a bar on a
terminal, a line per ~5% in a log); each row's verdict is in OUT.progress.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from core.config import Config, ConfigError
from core.data import DataError, iter_file, write_samples
from core.images import decode_image, encode_png
from core.options import standardize
from core.progress import ProgressBar
from core.types import Group, Sample
from zoomrl.session import RolloutSession

SAMPLED_STAGES = ("difficulty", "perception")


@dataclass
class Verdict:
    """One row's fate at one stage (a line of the progress file for the sampled stages)."""

    stage: str
    """labels | difficulty | perception"""
    id: str
    """The row's sample id, or '<file stem>:<row>' for a row that could not be read."""
    kept: bool
    reason: str
    """What decided it, in a few words the report counts by (e.g. 'never solved')."""
    detail: str
    """The same in full (the failed check with file, row and column; the counts)."""
    correct: int | None = None
    """Trajectories out of `k` that answered right (sampled stages)."""
    k: int | None = None


def curate_config(cfg: Config) -> Config:
    """The config the rollout actors run under: curate.k trajectories per row."""
    return OmegaConf.merge(cfg, {"rollout": {"n": cfg.curate.k}})


def solved(group: Group) -> int:
    """Trajectories of a scored group whose answer was right."""
    return sum(t.reward_parts.correct for t in group.trajectories)


def difficulty_verdict(sample_id: str, correct: int, k: int) -> Verdict:
    """Keep a row the model solves sometimes, not never nor always."""
    reason = "never solved" if correct == 0 else "always solved" if correct == k else "solved sometimes"
    return Verdict("difficulty", sample_id, 0 < correct < k, reason, f"solved {correct}/{k}", correct, k)


def perception_verdict(sample_id: str, crop_correct: int, full_correct: int, k: int) -> Verdict:
    """Keep a row whose ground-truth crop is solved more often than the full image."""
    kept = crop_correct > full_correct
    return Verdict("perception", sample_id, kept, "crop helps" if kept else "crop does not help",
                   f"crop solved {crop_correct}/{k}, full image {full_correct}/{k}", crop_correct, k)


def crop_box(boxes: list[list[float]], width: int, height: int, context: float) -> tuple[int, int, int, int]:
    """The union of `boxes`, widened on each side by `context` times its size, clipped to the image."""
    x1, y1 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x2, y2 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    dx, dy = (x2 - x1) * context, (y2 - y1) * context
    return (max(0, int(x1 - dx)), max(0, int(y1 - dy)),
            min(width, round(x2 + dx)), min(height, round(y2 + dy)))


def with_ground_truth_crop(sample: Sample, context: float, max_decoded_pixels: int) -> Sample:
    """The same question with its first image replaced by the crop of its ground-truth boxes."""
    image = decode_image(sample.images[0], max_decoded_pixels)
    crop = image.crop(crop_box(sample.gt_boxes, image.width, image.height, context))
    return dataclasses.replace(sample, images=[encode_png(crop)] + sample.images[1:], gt_boxes=[])


def read_rows(path: str, max_decoded_pixels: int) -> tuple[list[Sample], list[Verdict]]:
    """The rows that pass the label checks (standardized), and a verdict for every row."""
    stem = Path(path).stem
    passed, verdicts = [], []
    for index, sample in iter_file(path, max_decoded_pixels):
        if isinstance(sample, DataError):
            verdicts.append(Verdict("labels", f"{stem}:{index}", False, "label check failed", str(sample)))
            continue
        passed.append(standardize(sample))
        verdicts.append(Verdict("labels", sample.id, True, "labels consistent", f"row {index}"))
    return passed, verdicts


class Progress:
    """OUT.progress.jsonl: a settings header, then one sampled verdict per line."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.verdicts: dict[tuple[str, str], Verdict] = {}
        if path.is_file() and path.stat().st_size:
            lines = path.read_text().splitlines()
            header = json.loads(lines[0])
            if header != settings:
                raise ConfigError(f"{path} was written with other settings ({header}); now {settings}. "
                                  "Delete it to start over, or rerun with the settings it names.")
            for line in lines[1:]:
                if line.strip():  # a line cut short by an interruption is the only partial one
                    try:
                        verdict = Verdict(**json.loads(line))
                    except json.JSONDecodeError:
                        continue
                    self.verdicts[(verdict.stage, verdict.id)] = verdict
            self._sink = open(path, "a")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = open(path, "w")
            self._sink.write(json.dumps(settings) + "\n")
        self.resumed = len(self.verdicts)

    def get(self, stage: str, sample_id: str) -> Verdict | None:
        return self.verdicts.get((stage, sample_id))

    def add(self, verdict: Verdict) -> None:
        self.verdicts[(verdict.stage, verdict.id)] = verdict
        self._sink.write(json.dumps(dataclasses.asdict(verdict)) + "\n")
        self._sink.flush()

    def close(self) -> None:
        self._sink.close()


def _sample_stage(session: RolloutSession, progress: Progress, stage: str, samples: list[Sample],
                  verdict_of: Callable[[Sample, Group], Verdict], advance: Callable[[int, int], None],
                  prepare: Callable[[Sample], Sample] = lambda sample: sample) -> list[Verdict]:
    """Verdicts of `samples` at a sampled stage: from the progress file, else by rolling out
    `prepare(sample)` (same id), which only runs for the samples still to do; `advance(done, total)`
    after each (rows decided before a resume count as done)."""
    todo = [prepare(s) for s in samples if progress.get(stage, s.id) is None]
    by_id = {s.id: s for s in samples}
    for done, group in enumerate(session.groups(todo, stage), start=1):
        progress.add(verdict_of(by_id[group.sample.id], group))
        advance(len(samples) - len(todo) + done, len(samples))
    return [progress.get(stage, s.id) for s in samples]


def _stage_summary(verdicts: list[Verdict]) -> dict[str, Any]:
    dropped = [v for v in verdicts if not v.kept]
    return {"in": len(verdicts), "kept": len(verdicts) - len(dropped), "dropped": len(dropped),
            "dropped_by_reason": dict(Counter(v.reason for v in dropped)),
            "dropped_rows": [{"id": v.id, "reason": v.reason, "detail": v.detail} for v in dropped]}


def run_curate(cfg: Config, model_path: str, data: str, out: str | Path,
               show: Callable[[str], None] = print,
               progress_of: Callable[[str], Callable[[int, int], None]] = ProgressBar) -> dict[str, Any]:
    """Curate `data` into `out`; returns the report (also written to OUT.report.json). `show`
    gets the label stage's line; `progress_of(stage)` is what each sampled stage reports its
    progress to, `(done, total)` after each row (default: a bar on a terminal, else a line per
    ~5%)."""
    cfg = curate_config(cfg)
    k, out = cfg.curate.k, Path(out)
    rows, label_verdicts = read_rows(data, cfg.data.max_decoded_pixels)
    show(f"labels: {len(rows)}/{len(label_verdicts)} rows pass")
    settings = {"data": str(Path(data).resolve()), "model": model_path, "k": k,
                "temperature": cfg.rollout.temperature, "crop_context": cfg.curate.crop_context}
    progress = Progress(out.with_suffix(".progress.jsonl"), settings)
    try:
        with RolloutSession(cfg, model_path) as session:
            difficulty = _sample_stage(
                session, progress, "difficulty", rows,
                lambda sample, group: difficulty_verdict(sample.id, solved(group), k),
                progress_of("difficulty"))
            full_correct = {v.id: v.correct for v in difficulty}
            passed = [s for s, v in zip(rows, difficulty, strict=True) if v.kept]
            boxed = [s for s in passed if s.gt_boxes]
            perception = _sample_stage(
                session, progress, "perception", boxed,
                lambda sample, group: perception_verdict(sample.id, solved(group),
                                                         full_correct[sample.id], k),
                progress_of("perception"),
                prepare=lambda sample: with_ground_truth_crop(sample, cfg.curate.crop_context,
                                                              cfg.data.max_decoded_pixels))
        tokens_per_s = session.tokens_per_s
    finally:
        progress.close()
    dropped_by_crop = {v.id for v in perception if not v.kept}
    kept = [s for s in passed if s.id not in dropped_by_crop]
    write_samples(kept, out)
    report = {
        "data": str(data), "model": model_path, "out": str(out), "k": k,
        "rows": len(label_verdicts), "kept": len(kept),
        "resumed_verdicts": progress.resumed,
        "stages": {"labels": _stage_summary(label_verdicts), "difficulty": _stage_summary(difficulty),
                   "perception": _stage_summary(perception)},
        "perception_not_applicable": len(passed) - len(boxed),
        "difficulty_histogram": {str(c): n for c, n in
                                 sorted(Counter(v.correct for v in difficulty).items())},
        "tokens_per_s": tokens_per_s,
    }
    out.with_suffix(".report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
