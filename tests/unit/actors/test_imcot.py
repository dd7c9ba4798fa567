"""The iMCoT loop's edge cases, on a scripted engine (the real-vLLM runs are in
tests/integration/test_rollout_vllm.py).

The scripted engine writes given assistant turns with the real tiny tokenizer and expands image
pads the way vLLM does, so the loop's sequence bookkeeping is exercised for real; tools run
in-process on real images.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from actors.imcot import cut_at_stop, run_trajectory, turn_seed
from actors.prompt import INSTRUCTION, INSTRUCTION_WITHOUT_TOOLS
from core.data import read_samples
from core.images import num_image_tokens
from tests.helpers.scripted import ANSWER, ScriptedEngine, zoom
from tools import execute_tool, initial_view


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="module")
def sample(synth_dir):
    return read_samples(str(synth_dir / "train.parquet"))[0]


def rollout(tokenizer, sample, tiny_cfg, script, tools=None, **overrides):
    cfg = OmegaConf.merge(tiny_cfg, {"rollout": overrides}) if overrides else tiny_cfg
    if tools is not None:
        cfg = OmegaConf.merge(cfg, {"tools": {"enabled": tools}})
    engine = ScriptedEngine(tokenizer, script)
    views = [initial_view(sample.images[0], cfg.model, cfg.data.max_decoded_pixels)]

    async def run_tool(call, view):
        return execute_tool(call, [view], cfg.tools, cfg.model)

    traj = asyncio.run(run_trajectory(sample, views, engine, run_tool, cfg, group_id="g0", index=0,
                                      policy_version=7))
    return traj, engine


def test_two_zooms_then_answer_builds_an_exact_trajectory(tokenizer, sample, tiny_cfg):
    traj, engine = rollout(tokenizer, sample, tiny_cfg, [zoom([0, 0, 224, 224]), zoom([0, 0, 112, 112]),
                                                         ANSWER])
    assert traj.end_reason == "answer" and traj.num_turns == 3 and traj.policy_version == 7
    assert [c.ok for c in traj.tool_calls] == [True, True]
    assert [c.image_index for c in traj.tool_calls] == [1, 2]
    # the 1024 px original is seen at 448 px, so the first box covers 512 original px; that crop
    # is seen at 448 px too (the pixel budget), so the second box (in the crop's pixels) covers 128
    assert traj.tool_calls[0].box_original == pytest.approx([0, 0, 512, 512], abs=1)
    assert traj.tool_calls[1].box_original == pytest.approx([0, 0, 128, 128], abs=1)
    assert len(traj.images) == 3 and all(img.dtype == np.uint8 for img in traj.images)
    # learner view: pads expanded per image, masks and logprobs aligned
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (traj.input_ids == pad).sum() == sum(num_image_tokens(*img.shape[:2]) for img in traj.images)
    assert traj.loss_mask[:traj.prompt_len].sum() == 0
    sampled = [tokenizer.encode(t, add_special_tokens=False) for t in engine.script]
    assert traj.num_sampled_tokens == sum(len(s) for s in sampled)
    assert (traj.input_ids[traj.loss_mask == 1] == np.concatenate(sampled)).all()
    assert (traj.behavior_logprobs[traj.loss_mask == 0] == 0).all()
    assert traj.behavior_logprobs[traj.loss_mask == 1][:2] == pytest.approx([-0.01, -0.02])
    assert not (traj.input_ids[traj.loss_mask == 1] == pad).any()
    # each request carried the whole conversation so far with one pad per image
    assert [r.engine_ids.count(pad) for r in engine.requests] == [1, 2, 3]
    assert [len(r.images) for r in engine.requests] == [1, 2, 3]
    assert traj.response_text.count("<tool_response>") == 2 and INSTRUCTION in traj.response_text


def test_without_tools_nothing_is_offered_or_executed(tokenizer, sample, tiny_cfg):
    traj, engine = rollout(tokenizer, sample, tiny_cfg, [zoom([0, 0, 224, 224]), ANSWER], tools=[])
    prompt = tokenizer.decode(engine.requests[0].engine_ids, skip_special_tokens=False)
    assert "<tools>" not in prompt and "image_zoom_in_tool" not in prompt
    assert INSTRUCTION_WITHOUT_TOOLS in prompt
    assert len(engine.requests) == 1 and traj.tool_calls == [] and traj.end_reason == "no_tool_call"


def test_engine_running_past_the_stop_is_cut_at_the_first_tool_call(tokenizer, sample, tiny_cfg):
    overrun = zoom([0, 0, 224, 224]) + " junk <answer>C</answer>" + zoom([10, 10, 200, 200])
    traj, engine = rollout(tokenizer, sample, tiny_cfg, [overrun, ANSWER])
    first_turn = tokenizer.decode(traj.input_ids[traj.loss_mask == 1][:60], skip_special_tokens=False)
    assert "junk" not in traj.response_text and "junk" not in first_turn
    assert len(traj.tool_calls) == 1 and traj.tool_calls[0].ok and traj.end_reason == "answer"
    assert traj.num_sampled_tokens == (len(tokenizer.encode(zoom([0, 0, 224, 224]), add_special_tokens=False))
                                       + len(tokenizer.encode(ANSWER, add_special_tokens=False)))


def test_bad_calls_become_error_observations_and_the_trajectory_goes_on(tokenizer, sample, tiny_cfg):
    script = ['<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [5, 5</tool_call>',
              zoom([0, 0, 3, 3]), '<tool_call>{"name": "nope", "arguments": {}}</tool_call>', ANSWER]
    traj, _ = rollout(tokenizer, sample, tiny_cfg, script, max_tool_calls=5)
    assert traj.end_reason == "answer" and len(traj.tool_calls) == 3
    assert all(not c.ok for c in traj.tool_calls) and len(traj.images) == 1
    assert traj.response_text.count("Error: ") == 3
    assert "too small" in traj.tool_calls[1].error and "unknown tool" in traj.tool_calls[2].error


@pytest.mark.parametrize("script, overrides, reason, calls", [
    (["<think>hmm</think>no call, no answer<|im_end|>"], {}, "no_tool_call", 0),
    ([zoom([0, 0, 224, 224])] * 4, {"max_tool_calls": 2}, "max_tool_calls", 2),
    ([zoom([0, 0, 224, 224])] * 4, {"max_images": 2, "max_tool_calls": 5}, "max_images", 1),
    (["<think>" + "word " * 200], {"max_tokens_per_turn": 16}, "max_tokens_per_turn", 0),
    ([zoom([0, 0, 224, 224]), "<think>" + "word " * 200],
     {"max_response_tokens": 60, "max_tokens_per_turn": 50}, "max_response_tokens", 1),
])
def test_every_limit_ends_the_trajectory_with_its_reason(tokenizer, sample, tiny_cfg, script, overrides,
                                                         reason, calls):
    traj, _ = rollout(tokenizer, sample, tiny_cfg, script, **overrides)
    assert traj.end_reason == reason
    assert len(traj.tool_calls) == calls
    if "max_response_tokens" in overrides:
        assert traj.num_sampled_tokens <= overrides["max_response_tokens"]
    if "max_tokens_per_turn" in overrides and reason == "max_tokens_per_turn":
        assert traj.num_sampled_tokens == overrides["max_tokens_per_turn"]


def test_engine_length_limit_ends_with_max_model_len(tokenizer, sample, tiny_cfg):
    prompt_len = rollout(tokenizer, sample, tiny_cfg, [ANSWER])[0].prompt_len
    model_len = prompt_len + 100  # room for the first turn, not for a 256-token crop after it
    cfg = OmegaConf.merge(tiny_cfg, {"rollout": {"engine": {"max_model_len": model_len}}})
    traj, engine = rollout(tokenizer, sample, cfg, [zoom([0, 0, 224, 224]), ANSWER])
    assert traj.end_reason == "max_model_len" and len(engine.requests) == 1
    assert engine.requests[0].max_tokens == 100


def test_cut_at_stop_finds_the_first_stop(tokenizer):
    ids = tokenizer.encode("a</tool_call>b</tool_call>c", add_special_tokens=False)
    keep = cut_at_stop(tokenizer, ids)
    assert tokenizer.decode(ids[:keep], skip_special_tokens=False) == "a</tool_call>"
    assert cut_at_stop(tokenizer, ids[:1]) == 1
    assert cut_at_stop(tokenizer, []) == 0


def test_turn_seeds_are_reproducible_and_distinct():
    assert turn_seed(None, "g", 0, 0) is None
    assert turn_seed(1, "g", 0, 0) == turn_seed(1, "g", 0, 0)
    seeds = {turn_seed(1, g, i, t) for g in "ab" for i in range(4) for t in range(3)}
    assert len(seeds) == 24 and all(0 <= s < 2**31 for s in seeds)
