"""Sharded, atomic checkpoints with torch.distributed.checkpoint (DCP), and export to Hugging Face.

Layout of one checkpoint, `<root>/step-00000010/`:
    .metadata, __<rank>_0.distcp   model + optimizer, sharded as trained (DCP); the model only
                                   when saved before the first optimizer step
    rng-rank<r>.pt                 each rank's RNG states (torch, CUDA, numpy, python), as tensors
                                   and numbers only: loaded with `weights_only=True`
    hf/                            the model folder minus its weights (config, tokenizer, processor)
    trainer.json                   step, the driver's data position, model path, engine dtype

Atomic: every rank writes into `<root>/.tmp-step-00000010`, and rank 0 renames it to its final
name only after all ranks finished and `trainer.json` is written; a rename is atomic, so a crash
at any point leaves either the new checkpoint or none, never half of one. `latest_checkpoint`
only sees complete `step-*` folders, and the next save removes leftover `.tmp-*` folders.
The checkpoint root must be one folder every rank sees (a shared filesystem on a cluster).
DCP reshards on load: a checkpoint resumes on any number of ranks (RNG states of ranks the
checkpoint does not have are left as seeded).

Retention (`run.keep_checkpoints`): once a new checkpoint is complete, `remove_old_checkpoints`
removes the complete ones older than the newest k. It never touches the one just written, a
folder being written (`.tmp-*`) or anything that is not a complete checkpoint, so the newest
loadable checkpoint always stays. A removal renames the folder to `.tmp-*` first (atomic), so an
interrupted one leaves a leftover the next save clears, never a half-deleted `step-*` folder.

A checkpoint is code: `dcp.load` unpickles DCP's `.metadata` with plain `pickle.load` and its
non-tensor entries with `torch.load(weights_only=False)` (torch 2.13 offers no restricted loader
for either), so load only checkpoints from a trusted source. The RNG files, which zoomrl writes
itself, are loaded with torch's weights-only unpickler.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

STEP_PREFIX = "step-"
STEP_NAME = re.compile(rf"{STEP_PREFIX}(\d+)")  # a checkpoint folder's name: step-00000010
TMP_PREFIX = ".tmp-"
TRAINER_FILE = "trainer.json"
HF_DIR = "hf"


@dataclass
class TrainerState:
    """What a checkpoint records besides tensors."""

    step: int
    """Policy updates done (the policy version)."""
    model_path: str
    """Folder the model was loaded from."""
    dtype: str
    """Engine dtype (model.dtype) that `export_hf` writes the weights in."""
    world_size: int = 1
    """Learner ranks that wrote it (any number can load it)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """The driver's data position (prompt-stream position, groups not yet trained on), as JSON."""
    optimizer_state: bool = True
    """False when saved before the first optimizer step (e.g. at step 0, after a first batch
    filtered out entirely): the checkpoint then holds the model only, and a resume starts the
    optimizer afresh. Asking torch for an empty AdamW state would fill it with a fake step,
    which shifts its bias correction."""


def is_complete(path: Path) -> bool:
    """Whether path is a checkpoint a resume can load: a `step-N` folder with DCP's metadata and a
    readable trainer.json (written last, just before the rename that makes the folder appear)."""
    if not (STEP_NAME.fullmatch(path.name) and (path / ".metadata").is_file()):
        return False
    try:
        return isinstance(json.loads((path / TRAINER_FILE).read_text()), dict)
    except (OSError, ValueError):  # missing, unreadable, or not JSON
        return False


def complete_checkpoints(root: str | Path) -> list[Path]:
    """The complete checkpoints under root, oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if is_complete(p)]
    return sorted(done, key=lambda p: int(STEP_NAME.fullmatch(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under root, or None."""
    done = complete_checkpoints(root)
    return done[-1] if done else None


def checkpoints_to_remove(root: str | Path, keep: int, current: str | Path) -> list[Path]:
    """The checkpoints under root that `run.keep_checkpoints=keep` removes once `current` (the one
    just written) is complete: the complete ones older than the newest `keep`, oldest first.
    keep 0 keeps all. Never `current`, and nothing at all when `current` is not complete (a save
    that did not finish removes nothing); folders that are not complete checkpoints (one being
    written, an export, anything else) are neither counted nor removed. So with keep >= 1 the
    newest loadable checkpoint always stays."""
    current = Path(current)
    if keep == 0 or not is_complete(current):
        return []
    done = complete_checkpoints(root)
    return [p for p in done[:-keep] if p.resolve() != current.resolve()]


def remove_old_checkpoints(root: str | Path, keep: int, current: str | Path) -> list[Path]:
    """Remove `checkpoints_to_remove(root, keep, current)`; returns the folders removed. Each is
    renamed to a `.tmp-*` name first, so a crash midway leaves what the next save clears."""
    removed = checkpoints_to_remove(root, keep, current)
    for path in removed:
        doomed = path.with_name(f"{TMP_PREFIX}{path.name}.removed")
        shutil.rmtree(doomed, ignore_errors=True)  # left by a crash in an earlier removal
        os.replace(path, doomed)
        shutil.rmtree(doomed)
    return removed


def _rng_state() -> dict:
    """This process's RNG states in types torch's weights-only unpickler accepts (tensors, ints,
    floats, strings, tuples, dicts): numpy's MT19937 key goes as an int64 tensor."""
    numpy = np.random.get_state(legacy=False)  # {"bit_generator", "state": {"key", "pos"}, ...}
    numpy["state"]["key"] = torch.from_numpy(numpy["state"]["key"].astype(np.int64))
    return {"torch": torch.get_rng_state(), "numpy": numpy, "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _load_rng_state(path: Path) -> None:
    """Restore the RNG states `_rng_state` saved at path; a file holding anything but tensors
    and numbers is refused (pickle.UnpicklingError naming it), never unpickled."""
    try:
        state = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = str(err).splitlines()  # torch's message: advice, then the offending global
        reason = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else "").strip()
        raise pickle.UnpicklingError(
            f"{path}: refused to unpickle: zoomrl's RNG files hold only tensors and numbers, this one "
            f"holds more ({reason}). A file from before 2026-11 holds numpy arrays: delete it to "
            "resume with this rank's RNG as seeded") from None
    numpy = state["numpy"]
    numpy["state"]["key"] = numpy["state"]["key"].numpy().astype(np.uint32)
    torch.set_rng_state(state["torch"])
    np.random.set_state(numpy)
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_model_files(model_path: str, out: Path) -> None:
    """Config, tokenizer, processor and chat template of a model (folder or hub id), no weights."""
    from transformers import AutoConfig, AutoProcessor, GenerationConfig

    AutoConfig.from_pretrained(model_path).save_pretrained(out)
    AutoProcessor.from_pretrained(model_path).save_pretrained(out)
    try:
        GenerationConfig.from_pretrained(model_path).save_pretrained(out)
    except OSError:  # the model has no generation config
        pass


def _state_dict(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """What DCP saves and loads: {"model": ...} and, unless optimizer is None, {"optim": ...}."""
    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def save_checkpoint(root: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: TrainerState) -> Path:
    """Write a checkpoint of this step atomically; every rank calls it. Returns its folder.
    Before the first optimizer step (an empty optimizer state) it saves the model only."""
    state = replace(state, optimizer_state=bool(optimizer.state))
    rank = dist.get_rank()
    root = Path(root)
    final = root / f"{STEP_PREFIX}{state.step:08d}"
    staging = root / f"{TMP_PREFIX}{final.name}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(f"{TMP_PREFIX}*"):  # from a crash during an earlier save
            shutil.rmtree(leftover)
        staging.mkdir()
        _save_model_files(state.model_path, staging / HF_DIR)
    dist.barrier()
    dcp.save(_state_dict(model, optimizer if state.optimizer_state else None), checkpoint_id=staging)
    torch.save(_rng_state(), staging / f"rng-rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        (staging / TRAINER_FILE).write_text(json.dumps(asdict(state), indent=2))
        old = root / f"{TMP_PREFIX}{final.name}.old"
        if final.exists():  # re-saving a step (after a resume): swap, then drop the old one
            final.rename(old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def read_trainer_state(path: str | Path) -> TrainerState:
    """The non-tensor part of a checkpoint."""
    return TrainerState(**json.loads((Path(path) / TRAINER_FILE).read_text()))


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainerState:
    """Restore model, optimizer and this rank's RNG in place; every rank calls it. A checkpoint
    saved before the first optimizer step leaves the optimizer empty, as it was then."""
    path = Path(path)
    trainer = read_trainer_state(path)
    state = _state_dict(model, optimizer if trainer.optimizer_state else None)
    dcp.load(state, checkpoint_id=path)
    if trainer.optimizer_state:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        set_model_state_dict(model, state["model"])
        optimizer.state.clear()  # AdamW starts its moments and step count at the next step
    rng_file = path / f"rng-rank{dist.get_rank()}.pt"
    if rng_file.is_file():
        _load_rng_state(rng_file)
    return trainer


def export_hf(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write a Hugging Face folder (weights in the engine dtype, config, processor) from a checkpoint.

    checkpoint is one checkpoint folder, or a root of them (then the latest is exported). Runs
    in one process without a process group: DCP reassembles the shards of any world size. Needs
    only the checkpoint (its `hf/` folder holds config and processor). The result loads with
    `from_pretrained` and in vLLM like the original model folder.
    """
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not (checkpoint / TRAINER_FILE).is_file() and latest_checkpoint(checkpoint) is not None:
        checkpoint = latest_checkpoint(checkpoint)
    state = read_trainer_state(checkpoint)
    config = AutoConfig.from_pretrained(checkpoint / HF_DIR)
    with torch.device("meta"):  # no random init: every saved tensor is overwritten below
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.float32)
    model.to_empty(device="cpu")
    weights = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(weights, checkpoint_id=checkpoint, no_dist=True)  # in place; raises if a tensor is missing
    model.tie_weights()  # to_empty gave tied parameters separate storage; ties again if the config ties
    shutil.copytree(checkpoint / HF_DIR, out_dir, dirs_exist_ok=True)
    model.to(getattr(torch, state.dtype)).save_pretrained(out_dir)
    return out_dir
