"""The first half of a run: resolve the config, make the run directory, build model and data.

Everything here is what `zoomrl train` does before training starts, kept apart so the driver,
`zoomrl rollout` and `zoomrl eval` share it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from core.config import Config, ModelConfig, SynthConfig, save_config
from core.data import check_data_files
from core.progress import Say, quiet
from core.synth import write_synthetic
from core.tiny import ensure_tiny_model


def ensure_model(model_cfg: ModelConfig, synth: SynthConfig | None = None) -> str:
    """Path (folder or hub id) to load the policy from; builds the tiny model or the tiny base
    if needed. The tiny base is pretrained on the synthetic scenes `synth` describes."""
    if model_cfg.path == "tiny-base":
        from zoomrl.tiny_base import ensure_base  # the base's recipe imports the learner and actors

        if synth is None:
            raise ValueError("model.path=tiny-base needs the data.synth settings it is pretrained for")
        return str(ensure_base(model_cfg, synth))
    if model_cfg.path == "tiny":
        return str(ensure_tiny_model(model_cfg))
    return model_cfg.path


@dataclass
class RunInputs:
    """What a run starts from: where the model and the data are."""

    model_path: str
    train_files: list[str]
    test_files: list[str]


def synthetic_data_dir(cfg: Config) -> Path:
    """Cache folder of the synthetic set for these settings (content-addressed)."""
    s = cfg.data.synth
    key = json.dumps([s.n_train, s.n_test, s.image_size, s.seed, list(s.kinds), s.clutter, s.grid],
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cfg.model.cache_dir).expanduser() / "data" / f"synth-{digest}"


def ensure_data(cfg: Config) -> tuple[list[str], list[str]]:
    """Train and test files (checked: they exist and have a layout zoomrl reads); builds (once)
    the synthetic set when none are configured."""
    check_data_files(list(cfg.data.train_files), "data.train_files")
    check_data_files(list(cfg.data.test_files), "data.test_files")
    if cfg.data.train_files:
        return list(cfg.data.train_files), list(cfg.data.test_files)
    out = synthetic_data_dir(cfg)
    train, test = out / "train.parquet", out / "test.parquet"
    if not (train.is_file() and test.is_file()):
        s = cfg.data.synth
        write_synthetic(out, s.n_train, s.n_test, s.image_size, s.seed, list(s.kinds), s.clutter, s.grid)
    return [str(train)], list(cfg.data.test_files) or [str(test)]


def new_run_dir(cfg: Config) -> Path:
    """A fresh run directory `runs_dir/name-YYYYmmdd-HHMMSS[-k]`, with the resolved config saved.

    Runs started in the same second (a sweep) each get their own: creating the folder is the
    claim, so two processes never take the same name.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.run.runs_dir) / f"{cfg.run.name}-{stamp}"
    base.parent.mkdir(parents=True, exist_ok=True)
    run_dir, k = base, 1
    while True:
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            run_dir, k = Path(f"{base}-{k}"), k + 1
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


STEP_LOGS = ("metrics.jsonl", "trajectories.jsonl")
"""The run directory's per-step logs: JSON lines, each with its `step`."""


def set_aside_rows_after(run_dir: Path, step: int) -> list[Path]:
    """On resume from `step`: move the rows of the step logs past it (written by the run that died
    after its last checkpoint; their steps are trained again) to `<log>.before-resume-<step>`, so
    each step has one row again. Returns the files rows were moved to."""
    moved = []
    for name in STEP_LOGS:
        log = run_dir / name
        if not log.is_file():
            continue
        lines = log.read_text().splitlines(keepends=True)
        later = [line for line in lines if _row_step(line) > step]
        if not later:
            continue
        aside = run_dir / f"{name}.before-resume-{step}"
        with open(aside, "a") as sink:
            sink.writelines(later)
        kept = log.with_suffix(".jsonl.tmp")
        kept.write_text("".join(line for line in lines if _row_step(line) <= step))
        kept.replace(log)  # atomic: a crash leaves the old log or the new one, never half of it
        moved.append(aside)
    return moved


def _row_step(line: str) -> float:
    """The step of a log row; a row cut short by a killed process counts as past every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def prepare_inputs(cfg: Config, say: Say = quiet) -> RunInputs:
    """Build or locate the model and the data named by the config; `say` gets a line for each."""
    model_path = ensure_model(cfg.model, cfg.data.synth)
    say(f"model ready: {model_path}")
    train_files, test_files = ensure_data(cfg)
    say(f"data files ready: {len(train_files)} train, {len(test_files)} test")
    return RunInputs(model_path=model_path, train_files=train_files, test_files=test_files)
