"""Checkpoint retention, on folders laid out like checkpoints (no model: fast). Saving, resuming and
exporting a real learner's checkpoints: tests/integration/test_checkpoint.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import learner.checkpoint
from core.config import ConfigError, load_config
from learner.checkpoint import (
    checkpoints_to_remove,
    latest_checkpoint,
    remove_old_checkpoints,
)


def fake_checkpoint(root: Path, step: int, *, trainer: str | None = '{"step": 0}',
                    name: str | None = None) -> Path:
    """A folder laid out as save_checkpoint leaves one: DCP metadata and a shard, trainer.json
    (trainer=None: missing, as in a folder being written)."""
    path = root / (name or f"step-{step:08d}")
    path.mkdir(parents=True)
    (path / ".metadata").write_bytes(b"dcp")
    (path / "__0_0.distcp").write_bytes(b"shard")
    if trainer is not None:
        (path / "trainer.json").write_text(trainer)
    return path


def names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_retention_keeps_the_newest_k_and_removes_the_rest_oldest_first(tmp_path):
    paths = [fake_checkpoint(tmp_path, step) for step in (0, 10, 20, 30)]  # step 0: the model only
    assert checkpoints_to_remove(tmp_path, 0, paths[-1]) == []  # 0 keeps all
    assert checkpoints_to_remove(tmp_path, 4, paths[-1]) == []
    assert checkpoints_to_remove(tmp_path, 3, paths[-1]) == paths[:1]
    assert remove_old_checkpoints(tmp_path, 2, paths[-1]) == paths[:2]
    assert names(tmp_path) == ["step-00000020", "step-00000030"]
    assert latest_checkpoint(tmp_path) == paths[-1]


def test_retention_keeps_the_one_being_written(tmp_path):
    old = [fake_checkpoint(tmp_path, step) for step in (10, 20)]
    staging = fake_checkpoint(tmp_path, 30, trainer=None, name=".tmp-step-00000030")
    # a save that did not complete removes nothing, even with keep=1
    unfinished = fake_checkpoint(tmp_path, 40, trainer=None)
    assert checkpoints_to_remove(tmp_path, 1, unfinished) == []
    # the one just written stays even when a newer one is there (keep counts from the newest)
    newer = fake_checkpoint(tmp_path, 50)
    assert remove_old_checkpoints(tmp_path, 1, old[1]) == old[:1]
    assert names(tmp_path) == [staging.name, "step-00000020", unfinished.name, newer.name]


def test_retention_keeps_the_only_loadable_one(tmp_path):
    """Folders that look like checkpoints but cannot be loaded neither count toward keep nor get
    removed; the loadable one stays, and is what a resume picks."""
    loadable = fake_checkpoint(tmp_path, 10)
    fake_checkpoint(tmp_path, 20, trainer=None)                 # no trainer.json
    fake_checkpoint(tmp_path, 30, trainer='{"step": 3')         # trainer.json cut short
    (tmp_path / "step-00000040").mkdir()                        # empty
    (tmp_path / "step-00000040" / "trainer.json").write_text("{}")  # no DCP metadata
    fake_checkpoint(tmp_path, 50, name="step-00000050-hf")      # an export named after its step
    before = names(tmp_path)
    assert latest_checkpoint(tmp_path) == loadable
    assert remove_old_checkpoints(tmp_path, 1, loadable) == []
    assert names(tmp_path) == before


def test_an_interrupted_removal_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    paths = [fake_checkpoint(tmp_path, step) for step in (10, 20, 30)]

    def killed(path, ignore_errors=False):  # the process dies while deleting files
        if not ignore_errors:
            raise SystemExit("killed")

    monkeypatch.setattr(learner.checkpoint, "shutil", SimpleNamespace(rmtree=killed))
    with pytest.raises(SystemExit):
        remove_old_checkpoints(tmp_path, 1, paths[-1])
    monkeypatch.undo()
    # the folder left behind has a .tmp- name, which the next save clears, and nothing counts it
    assert names(tmp_path) == [".tmp-step-00000010.removed", "step-00000020", "step-00000030"]
    assert checkpoints_to_remove(tmp_path, 1, paths[-1]) == paths[1:2]


def test_keep_checkpoints_domain():
    assert load_config(None, ["run.keep_checkpoints=3"]).run.keep_checkpoints == 3
    with pytest.raises(ConfigError, match="run.keep_checkpoints"):
        load_config(None, ["run.keep_checkpoints=-1"])
