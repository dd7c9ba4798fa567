"""The first half of a run: resolve the config, make the run directory, build model and data.

Everything here is what `zoomrl train` does before training starts, kept apart so the driver,
`zoomrl rollout` and `zoomrl eval` share it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from zoomrl.config import Config, save_config
from zoomrl.synth import write_synthetic
from zoomrl.tiny import ensure_model


@dataclass
class RunInputs:
    """What a run starts from: where the model and the data are."""

    model_path: str
    train_files: list[str]
    test_files: list[str]


def synthetic_data_dir(cfg: Config) -> Path:
    """Cache folder of the synthetic set for these settings (content-addressed)."""
    s = cfg.data.synth
    key = json.dumps([s.n_train, s.n_test, s.image_size, s.seed], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cfg.model.cache_dir).expanduser() / "data" / f"synth-{digest}"


def ensure_data(cfg: Config) -> tuple[list[str], list[str]]:
    """Train and test parquet files; builds (once) the synthetic set when none are configured."""
    if cfg.data.train_files:
        missing = [f for f in list(cfg.data.train_files) + list(cfg.data.test_files)
                   if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"data file(s) not found: {', '.join(missing)}")
        return list(cfg.data.train_files), list(cfg.data.test_files)
    out = synthetic_data_dir(cfg)
    train, test = out / "train.parquet", out / "test.parquet"
    if not (train.is_file() and test.is_file()):
        s = cfg.data.synth
        write_synthetic(out, s.n_train, s.n_test, s.image_size, s.seed)
    return [str(train)], list(cfg.data.test_files) or [str(test)]


def new_run_dir(cfg: Config) -> Path:
    """A fresh run directory `runs_dir/name-YYYYmmdd-HHMMSS[-k]`, with the resolved config saved."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.run.runs_dir) / f"{cfg.run.name}-{stamp}"
    run_dir, k = base, 1
    while run_dir.exists():
        run_dir, k = Path(f"{base}-{k}"), k + 1
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def prepare_inputs(cfg: Config) -> RunInputs:
    """Build or locate the model and the data named by the config."""
    model_path = ensure_model(cfg.model)
    train_files, test_files = ensure_data(cfg)
    return RunInputs(model_path=model_path, train_files=train_files, test_files=test_files)
