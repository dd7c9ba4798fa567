"""Checkpoints (sharded DCP, atomic, resumable) and export to a Hugging Face folder, on one learner
rank in this process (world size 1); the 2-rank case is in test_ranks.py, retention in
tests/unit/learner/test_checkpoint.py."""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

import learner.checkpoint
from learner.checkpoint import (
    export_hf,
    latest_checkpoint,
    read_trainer_state,
    remove_old_checkpoints,
)
from tests.helpers.learner import assert_same_state, full_state, local_worker, shard_of
from zoomrl.cli import main as zoomrl_main


def test_resume_is_bit_identical(tmp_path, tiny_model_path, groups):
    extra = {"stream": {"epoch": 0, "index": 2}, "pending": [["s1", "g0-1"]]}
    with local_worker(tiny_model_path) as worker:
        first, second = shard_of(worker, groups[:1], 4096), shard_of(worker, groups[1:], 4096)
        worker.train_step([first])
        path = worker.save_checkpoint(str(tmp_path), 1, extra)
        saved = full_state(worker)
        worker.train_step([second])
        continued = full_state(worker)
        with pytest.raises(AssertionError):  # the comparison can fail: training moved the state
            assert_same_state(continued, saved)
        state = worker.load_checkpoint(path)
        assert (state.step, state.extra, worker.step) == (1, extra, 1)
        assert_same_state(full_state(worker), saved)
        worker.train_step([second])  # the same update again gives the same result, bit for bit
        assert_same_state(full_state(worker), continued)
        with pytest.raises(ValueError, match="learner is at step 2"):
            worker.save_checkpoint(str(tmp_path), 5, extra)
    with local_worker(tiny_model_path) as fresh:  # a new learner resumes from the latest
        assert latest_checkpoint(tmp_path) == Path(path)
        fresh.load_checkpoint(str(latest_checkpoint(tmp_path)))
        assert fresh.step == 1
        assert_same_state(full_state(fresh), saved)
        fresh.train_step([second])
        assert_same_state(full_state(fresh), continued)


def test_interrupted_save_leaves_previous_checkpoint_usable(tmp_path, tiny_model_path, groups, monkeypatch):
    with local_worker(tiny_model_path) as worker:
        shard = shard_of(worker, groups, 4096)
        worker.train_step([shard])
        previous = worker.save_checkpoint(str(tmp_path), 1, {})
        saved = full_state(worker)
        worker.train_step([shard])

        def killed(*args):  # the process dies after dcp.save, before the rename
            raise SystemExit("killed")

        monkeypatch.setattr(learner.checkpoint, "os", SimpleNamespace(replace=killed))
        with pytest.raises(SystemExit):
            worker.save_checkpoint(str(tmp_path), 2, {})
        monkeypatch.undo()
        staging = tmp_path / ".tmp-step-00000002"
        assert (staging / ".metadata").is_file() and not (tmp_path / "step-00000002").exists()
        (tmp_path / "step-00000009").mkdir()  # a folder that is not a checkpoint: no trainer.json
        assert latest_checkpoint(tmp_path) == Path(previous)

        worker.load_checkpoint(str(latest_checkpoint(tmp_path)))
        assert worker.step == 1
        assert_same_state(full_state(worker), saved)
        worker.train_step([shard])
        done = worker.save_checkpoint(str(tmp_path), 2, {})  # the next save clears the leftover
        assert not staging.exists() and latest_checkpoint(tmp_path) == Path(done)
        again = worker.save_checkpoint(str(tmp_path), 2, {"again": True})  # a step saved twice: replaced
    assert again == done and read_trainer_state(again).extra == {"again": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001", "step-00000002", "step-00000009"]
    # retention recognises real checkpoints as complete, and leaves the folder that is not one
    assert remove_old_checkpoints(tmp_path, 1, again) == [Path(previous)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002", "step-00000009"]


def test_a_step_0_checkpoint_holds_the_model_and_resumes(tmp_path, tiny_model_path, groups):
    """A first batch filtered out entirely (all-equal rewards) leaves the learner at step 0 when
    the driver checkpoints (before: ValueError "no update yet"). The checkpoint holds the model
    without optimizer state; resuming from it, in place after an update or in a fresh learner,
    gives the model as loaded and an empty optimizer, and the next update is bit for bit the same."""
    extra = {"stream": {"epoch": 0, "index": 1}, "pending": [], "dropped_groups": 0}
    with local_worker(tiny_model_path) as worker:
        shard = shard_of(worker, groups, 4096)
        path = worker.save_checkpoint(str(tmp_path), 0, extra)
        assert Path(path).name == "step-00000000" and not read_trainer_state(path).optimizer_state
        saved = full_state(worker)
        assert saved[1] == {}  # no optimizer state, and none faked
        worker.train_step([shard])
        continued = full_state(worker)
        state = worker.load_checkpoint(path)
        assert (state.step, state.extra, worker.step) == (0, extra, 0)
        assert_same_state(full_state(worker), saved)
        worker.train_step([shard])
        assert_same_state(full_state(worker), continued)
    with local_worker(tiny_model_path) as fresh:
        fresh.load_checkpoint(str(latest_checkpoint(tmp_path)))
        assert fresh.step == 0
        assert_same_state(full_state(fresh), saved)
        fresh.train_step([shard])
        assert_same_state(full_state(fresh), continued)
    exported = Qwen2_5_VLForConditionalGeneration.from_pretrained(export_hf(path, tmp_path / "hf"))
    assert all(torch.equal(t, saved[0][k]) for k, t in exported.state_dict().items())


class RunsCode:
    """Unpickling this runs os.mkdir(path): what a tampered checkpoint file could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def test_rng_states_load_without_unpickling_code(tmp_path, tiny_model_path, groups):
    """RNG files hold tensors and numbers only and load with torch's weights-only unpickler: they
    round-trip (the next draws of torch, numpy and python repeat), and a file holding any other
    object is refused, naming the file, without running its code (before: torch.load with
    weights_only=False ran it)."""
    with local_worker(tiny_model_path) as worker:
        worker.train_step([shard_of(worker, groups, 4096)])
        path = Path(worker.save_checkpoint(str(tmp_path), 1, {}))
        rng_file = path / "rng-rank0.pt"
        draws = (torch.rand(4), np.random.rand(4), np.random.randn(), random.random())
        worker.load_checkpoint(str(path))
        again = (torch.rand(4), np.random.rand(4), np.random.randn(), random.random())
        assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1])
        assert draws[2:] == again[2:]

        state = torch.load(rng_file, weights_only=True)
        marker = tmp_path / "code-ran"
        torch.save(state | {"python": RunsCode(marker)}, rng_file)
        refused = rf"{re.escape(str(rng_file))}: refused.*GLOBAL posix.mkdir"
        with pytest.raises(pickle.UnpicklingError, match=refused):
            worker.load_checkpoint(str(path))
        assert not marker.exists()
        torch.save(state | {"numpy": np.random.get_state()}, rng_file)  # as zoomrl wrote it before
        with pytest.raises(pickle.UnpicklingError, match=r"GLOBAL numpy.*before 2026-11 holds numpy arrays"):
            worker.load_checkpoint(str(path))
        rng_file.unlink()  # no RNG file: the rank keeps its RNG as seeded
        assert worker.load_checkpoint(str(path)).step == 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_path, groups):
    """A checkpoint after two updates (lr 1e-2 so weights visibly move), and its full weights."""
    root = tmp_path_factory.mktemp("ckpt")
    with local_worker(tiny_model_path, "learner.lr=1e-2") as worker:
        shard = shard_of(worker, groups, 4096)
        worker.train_step([shard])
        worker.train_step([shard])
        path = worker.save_checkpoint(str(root), 2, {})
        weights = full_state(worker)[0]
    return path, weights


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    assert zoomrl_main(["export", trained[0], "--out", str(out)]) == 0
    return out


def test_export_loads_in_transformers(exported, trained, tiny_model_path):
    _, weights = trained
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(exported)
    original = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path)
    state = model.state_dict()
    assert state.keys() == weights.keys()
    for name, tensor in state.items():
        assert torch.equal(tensor, weights[name]), name
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # still tied
    assert not torch.equal(state["lm_head.weight"], original.state_dict()["lm_head.weight"])
    processor = AutoProcessor.from_pretrained(exported)
    text = processor.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    ids = processor(text=[text], return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 3)


def test_export_in_engine_dtype_and_from_a_root(trained, tmp_path):
    """export_hf writes trainer.json's dtype (model.dtype); given a root, it exports the latest."""
    checkpoint = tmp_path / "root" / "step-00000002"
    shutil.copytree(trained[0], checkpoint)
    state = json.loads((checkpoint / "trainer.json").read_text()) | {"dtype": "bfloat16"}
    (checkpoint / "trainer.json").write_text(json.dumps(state))
    assert read_trainer_state(checkpoint).dtype == "bfloat16"
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(export_hf(tmp_path / "root", tmp_path / "out"))
    assert model.dtype == torch.bfloat16
    assert torch.equal(model.lm_head.weight, trained[1]["lm_head.weight"].to(torch.bfloat16))


def test_export_cli_errors(tmp_path, capsys):
    assert zoomrl_main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "missing" in capsys.readouterr().err


VLLM_SCRIPT = """
import json, sys
import numpy as np
from PIL import Image
from vllm import LLM, SamplingParams
llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=2048,
          limit_mm_per_prompt={"image": 1}, seed=0)
prompt = ("<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n"
          "<|vision_start|><|image_pad|><|vision_end|>What colour?<|im_end|>\\n<|im_start|>assistant\\n")
image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 252, 3), dtype=np.uint8))
out = llm.generate({"prompt": prompt, "multi_modal_data": {"image": image}},
                   SamplingParams(max_tokens=4, temperature=0.0, logprobs=0))[0]
steps = out.outputs[0].logprobs
print("RESULT" + json.dumps({"prompt_ids": list(out.prompt_token_ids), "ids": list(out.outputs[0].token_ids),
                             "logprobs": [s[t].logprob for s, t in zip(steps, out.outputs[0].token_ids)]}))
"""


def test_export_loads_in_vllm(exported):
    """vLLM's CPU engine serves the exported folder; its greedy tokens and their log-probs match
    transformers on the same folder (so vLLM runs the trained weights, not a fresh init)."""
    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    run = subprocess.run([sys.executable, "-c", VLLM_SCRIPT, str(exported)], env=env, capture_output=True,
                         text=True, timeout=600)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT"))
    assert len(result["ids"]) == 4
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(exported)
    processor = AutoProcessor.from_pretrained(exported)
    image = np.random.default_rng(0).integers(0, 256, (224, 252, 3), dtype=np.uint8)
    vision = processor.image_processor(images=[image], return_tensors="pt")
    ids = torch.tensor([result["prompt_ids"] + result["ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=vision["pixel_values"],
                       image_grid_thw=vision["image_grid_thw"],
                       mm_token_type_ids=(ids == model.config.image_token_id).int()).logits[0].float()
    start = len(result["prompt_ids"])
    logprobs = logits.log_softmax(-1)[start - 1:-1].gather(-1, ids[0, start:, None]).squeeze(-1)
    assert logits[start - 1].argmax().item() == result["ids"][0]  # greedy first token agrees
    assert logprobs.tolist() == pytest.approx(result["logprobs"], abs=2e-3)


# ---- retention (run.keep_checkpoints) ----
