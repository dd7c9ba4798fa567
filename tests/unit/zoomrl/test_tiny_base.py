"""The tiny base (`model.path: tiny-base`): its supervised text is the rollout's and its build is
deterministic (same seeds, same weights after the first optimizer steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from core.choices import choice_index
from core.config import TinyBaseConfig, ToolsConfig, load_config
from core.tiny import _train_tokenizer, as_dataclass
from rewards.answer import extract_answer
from rewards.format import well_formed
from tools import ToolCall, execute_tool, parse_tool_call
from zoomrl.tiny_base import BOX_CELLS, Pretraining, base_corpus, build_base, describe, ensure_base, measure


@pytest.fixture(scope="module")
def ci_cfg():
    return load_config("deepeyes-mini-ci")


@pytest.fixture(scope="module")
def pretraining(ci_cfg):
    dims = as_dataclass(ci_cfg.model.base, TinyBaseConfig).dims
    return Pretraining(_train_tokenizer(dims, base_corpus(ci_cfg.model, ci_cfg.data.synth)), ci_cfg.model)


def _turns(tokenizer, trajectory) -> list[tuple[str, bool]]:
    """(text, trained) of each run of tokens with one loss-mask value after the prompt."""
    ids, mask = trajectory.input_ids[trajectory.prompt_len:], trajectory.loss_mask[trajectory.prompt_len:]
    runs, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            runs.append((tokenizer.decode(ids[start:i]), bool(mask[start])))
            start = i
    return runs


def test_supervised_trajectories_are_what_the_rollout_reads(pretraining, ci_cfg):
    """Each kind of supervised trajectory, rendered by the rollout's own code: the zoom turn parses
    to a call the zoom tool executes on the drawn object, the answer turn is well formed and the
    reward rules read its answer as the right option; 'read' trains only the turn after the crop."""
    tokenizer = pretraining.tokenizer
    scene = pretraining.scene(0, ci_cfg.data.synth, seed=0)
    target, other = scene.objects[0], scene.objects[1]
    right = scene.sample.choices["ABCD".index(scene.sample.answer)]
    for kind, obj in (("search", other), ("read", target), ("direct", None), ("no_tools", None)):
        trajectory = pretraining.trajectory(scene, kind, obj)
        runs = _turns(tokenizer, trajectory)
        trained = [text for text, is_trained in runs if is_trained]
        last = trained[-1]
        assert last.startswith("<think>") and last.endswith("</answer><|im_end|>")
        assert choice_index(extract_answer([last]), scene.sample.choices) == scene.sample.choices.index(right)
        assert well_formed([text for text, _ in runs[:1]] + [last], "".join(t for t, _ in runs))
        if kind in ("direct", "no_tools"):
            assert len(runs) == 1 and len(trajectory.images) == 1
            continue
        zoom_turn = runs[0][0]
        assert runs[0][1] == (kind == "search")
        call = parse_tool_call(zoom_turn)
        assert isinstance(call, ToolCall) and call.name == "image_zoom_in_tool"
        outcome = execute_tool(call, [scene.view], ToolsConfig(), ci_cfg.model)
        x1, y1, x2, y2 = obj.box
        quarter = (x2 - x1) // 4  # the checkered core: the middle half of the object
        bx1, by1, bx2, by2 = outcome.box_original
        assert bx1 <= x1 + quarter and by1 <= y1 + quarter and bx2 >= x2 - quarter and by2 >= y2 - quarter
        box = call.arguments["bbox_2d"]  # BOX_CELLS of the object's grid cell, at its middle
        cell = scene.view.width // ci_cfg.data.synth.grid  # one image token of the full view
        assert box[2] - box[0] == box[3] - box[1] == round(cell * BOX_CELLS)
        for low, high in (box[0::2], box[1::2]):
            assert abs((low + high) / 2 % cell - cell / 2) <= 0.5  # the cell's middle
        assert np.array_equal(outcome.view.pixels, trajectory.images[1])
        assert describe(obj) in last and f"with {obj.checks} checks" in last


def test_a_base_without_a_grid_is_refused_naming_the_key(ci_cfg):
    cfg = OmegaConf.merge(ci_cfg, {"data": {"synth": {"grid": 0}}})
    with pytest.raises(ValueError, match=r"data\.synth\.grid > 0"):
        ensure_base(cfg.model, cfg.data.synth)


def test_build_is_deterministic_and_trains(ci_cfg, pretraining, tmp_path):
    """Same seeds, same weights after the first optimizer steps; and the steps changed them."""
    small = OmegaConf.merge(ci_cfg, {"model": {"base": {"images": 2, "captions_per_step": 2,
                                                        "pointings_per_step": 1,
                                                        "trajectories_per_step": 1,
                                                        "caption_steps": 1}}})
    paths = [build_base(small.model, small.data.synth, tmp_path / name, log=lambda line: None, steps=2)
             for name in ("a", "b")]
    from transformers import Qwen2_5_VLForConditionalGeneration

    from core.tiny import _build_model

    a, b = (Qwen2_5_VLForConditionalGeneration.from_pretrained(p).state_dict() for p in paths)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (paths[0] / "tokenizer.json").read_text() == (paths[1] / "tokenizer.json").read_text()
    # the same tokenizer (same dims, corpus and settings), so the same initial weights
    initial = _build_model(as_dataclass(small.model.base, TinyBaseConfig).dims,
                           pretraining.tokenizer).state_dict()
    assert not all(torch.equal(a[k], initial[k]) for k in initial)
    # the measurement runs on a built base (its figures mean nothing after 2 steps)
    from transformers import AutoProcessor

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(paths[0]).eval()
    skills = measure(model, AutoProcessor.from_pretrained(paths[0]), small.model, small.data.synth, n=1)
    assert skills.n == 1 and 0 <= skills.colour <= 1 and 0 <= skills.pointing_iou <= 1
