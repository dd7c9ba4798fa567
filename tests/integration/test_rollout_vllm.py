"""Rollout actors on the real vLLM CPU engine with the tiny model, on a local Ray cluster.

Two actors for the module: one whose first turns are scripted by the forcing logits processor
(so the crop path runs end to end through vLLM: two zooms, the second a crop of the crop, then an
answer), and one sampling freely with a fixed seed (weight updates).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray
import torch
from omegaconf import OmegaConf
from transformers import Qwen2_5_VLForConditionalGeneration

from actors import RolloutActor
from actors.rollout import PolicyWeights, Sampling
from core.data import read_samples
from tests.helpers.hf import hf_logprobs, hf_model
from tests.helpers.ray_metrics import samples, scrape_ray_metrics
from tests.helpers.weights import split

FORCING = "actors.forcing:ForcedTurnsLogitsProcessor"


def zoom(box) -> str:
    return ('<think>the object is small, zoom in</think><tool_call>{"name": "image_zoom_in_tool", '
            f'"arguments": {{"bbox_2d": {list(box)}}}}}</tool_call>')


@pytest.fixture(scope="module")
def sample(synth_dir):
    return read_samples(str(synth_dir / "train.parquet"))[0]


def start_actor(cfg, model_path):
    actor = RolloutActor.options(num_cpus=1).remote(cfg, model_path)
    ray.get(actor.ready.remote())
    return actor


@pytest.fixture(scope="module")
def forced(ray_cluster, tiny_cfg, tiny_model_path, sample):
    script = [zoom([0, 0, 224, 224]), zoom([112, 112, 336, 336]),
              f"<think>it is clear now</think><answer>{sample.answer}</answer><|im_end|>"]
    cfg = OmegaConf.merge(tiny_cfg, {"rollout": {
        "n": 2, "seed": 0, "sampling_extra_args": {"forced_turns": script},
        "engine": {"logits_processors": [FORCING]}}})
    actor = start_actor(cfg, tiny_model_path)
    yield actor, cfg
    ray.get(actor.shutdown.remote())
    ray.kill(actor)


@pytest.fixture(scope="module")
def free(ray_cluster, tiny_cfg, tiny_model_path):
    cfg = OmegaConf.merge(tiny_cfg, {"rollout": {"n": 3, "seed": 0, "max_tokens_per_turn": 24}})
    actor = start_actor(cfg, tiny_model_path)
    yield actor
    ray.get(actor.shutdown.remote())
    ray.kill(actor)


def generate(actor, sample, group_id):
    summary_ref, group_ref = actor.generate_group.remote(sample, group_id)
    return ray.get(summary_ref), ray.get(group_ref)


def test_forced_zooms_run_through_vllm_and_match_transformers_logprobs(forced, sample, tiny_model_path):
    actor, cfg = forced
    ray.get(actor.take_spans.remote())  # the start-up's
    summary, group = generate(actor, sample, "forced-0")
    # The actor's spans (bench anatomy's lane): the group's images decoded, its trajectories
    # generated, its 4 calls waiting on tool tasks inside that, then the reward (rules alone, no
    # judge: scored in the actor, not in a task).
    spans = ray.get(actor.take_spans.remote())
    [generated] = [s for s in spans if s.name == "generate"]
    [scored] = [s for s in spans if s.name == "reward"]
    tools = [s for s in spans if s.name == "tool"]
    assert len(tools) == 4 and all(generated.start <= s.start <= s.end <= generated.end for s in tools)
    assert spans[0].name == "decode images" and spans[0].end <= generated.start
    assert generated.end <= scored.start and len(spans) == 7
    assert summary.group_id == "forced-0" and len(summary.trajectories) == 2 and summary.policy_version == 0
    for traj in group.trajectories:
        assert traj.end_reason == "answer" and traj.num_turns == 3
        assert [call.ok for call in traj.tool_calls] == [True, True], [c.error for c in traj.tool_calls]
        # 1024 px original seen at 448 px; the crop of [0, 0, 512, 512] is seen at 448 px too
        assert traj.tool_calls[0].box_original == pytest.approx([0, 0, 512, 512], abs=1)
        assert traj.tool_calls[1].box_original == pytest.approx([128, 128, 384, 384], abs=1)
        assert len(traj.images) == 3
        # the forced answer is right, the format is clean and the crops count: 0.8 + 1.2
        assert traj.reward_parts.acc == 1.0 and traj.reward_parts.format == 0.0
        assert traj.reward == pytest.approx(2.0)
    assert [t.reward_parts.acc for t in summary.trajectories] == [1.0, 1.0]
    np.testing.assert_allclose(summary.rewards, 2.0)
    # The learner's view of the sequence reproduces the engine's log-probs token for token.
    # Tolerance: both run fp32 on CPU, but vLLM's CPU kernels (oneDNN GEMMs, its attention) sum
    # in another order than transformers: measured mean 1.5e-3, max 8e-3 nats. Misaligning the
    # views by one token costs ~0.3 nats (checked below), so 1e-2 max / 3e-3 mean separates them.
    traj = group.trajectories[0]
    recomputed = hf_logprobs(tiny_model_path, cfg, traj)
    sampled = np.flatnonzero(traj.loss_mask == 1)
    assert len(sampled) > 50
    engine = traj.behavior_logprobs[sampled]
    np.testing.assert_allclose(engine, recomputed[sampled], atol=1e-2, rtol=0)
    assert np.abs(engine - recomputed[sampled]).mean() < 3e-3
    assert np.abs(engine[:-1] - recomputed[sampled[:-1] + 1]).mean() > 0.1  # the check can fail


def test_free_sampling_gives_consistent_groups(free, sample):
    summary, group = generate(free, sample, "free-0")
    assert len(group.trajectories) == 3
    for traj in group.trajectories:
        n = len(traj.input_ids)
        assert traj.loss_mask.shape == traj.behavior_logprobs.shape == (n,)
        assert 0 < traj.num_sampled_tokens <= 24 * traj.num_turns
        assert (traj.behavior_logprobs[traj.loss_mask == 1] < 0).all()
        assert (traj.behavior_logprobs[traj.loss_mask == 0] == 0).all()
        assert traj.end_reason in {"answer", "no_tool_call", "max_tokens_per_turn", "max_tool_calls",
                                   "max_images", "max_response_tokens"}
    assert summary.response_tokens == sum(t.num_sampled_tokens for t in group.trajectories)
    texts = {t.response_text for t in group.trajectories}
    assert len(texts) > 1  # seeds differ per trajectory


def test_a_request_may_sample_its_own_way(free, sample):
    """A validation request among training ones: eval's 2 greedy trajectories from an actor whose
    config samples 3 at temperature 1 (with seeds that differ per trajectory, so at temperature 1
    they differ: the test above); the next request samples as configured again."""
    _, group_ref = free.generate_group.remote(sample, "greedy", None, Sampling(n=2, temperature=0.0))
    greedy = ray.get(group_ref)
    assert [len(t.response_text) > 0 for t in greedy.trajectories] == [True, True]
    assert greedy.trajectories[0].response_text == greedy.trajectories[1].response_text
    _, configured = generate(free, sample, "configured")
    assert len(configured.trajectories) == 3 and len({t.response_text for t in configured.trajectories}) > 1


def test_weight_update_changes_generations_and_restoring_restores_them(free, sample, tiny_model_path):
    original = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path).state_dict()
    generator = torch.Generator().manual_seed(0)
    perturbed = {name: t + 0.5 * torch.randn(t.shape, generator=generator) if t.is_floating_point() else t
                 for name, t in original.items()}
    before = generate(free, sample, "weights")[1]
    assert ray.get(free.update_weights.remote(1, ray.put(perturbed))) == 1
    changed = generate(free, sample, "weights")[1]
    assert ray.get(free.update_weights.remote(2, ray.put(original))) == 2
    restored = generate(free, sample, "weights")[1]
    assert [t.policy_version for t in changed.trajectories] == [1] * 3
    assert [t.policy_version for t in restored.trajectories] == [2] * 3
    texts = [[t.response_text for t in g.trajectories] for g in (before, changed, restored)]
    assert texts[1] != texts[0]
    assert texts[2] == texts[0]
    np.testing.assert_allclose(restored.trajectories[0].behavior_logprobs,
                               before.trajectories[0].behavior_logprobs, atol=1e-4)


def test_weights_in_learner_parts_load_as_the_whole_state_dict_does(free, sample, tiny_model_path):
    """The route training takes: every learner rank's rows in the object store, written by the
    actor into its engine's shared buffer (see actors/engine.py), loaded by vLLM's worker."""
    original = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path).state_dict()
    generator = torch.Generator().manual_seed(1)
    perturbed = {name: t + 0.5 * torch.randn(t.shape, generator=generator) if t.is_floating_point() else t
                 for name, t in original.items()}
    current = ray.get(free.ready.remote())
    assert ray.get(free.update_weights.remote(current + 1, ray.put(perturbed))) == current + 1
    whole = generate(free, sample, "parts")[1]
    assert ray.get(free.update_weights.remote(current + 2, ray.put(original))) == current + 2
    parts = [ray.put(part) for part in split(perturbed, 3)]  # as LearnerGroup.publish_weights sends them
    assert ray.get(free.update_weights.remote(current + 3, parts)) == current + 3
    from_parts = generate(free, sample, "parts")[1]
    assert [t.response_text for t in from_parts.trajectories] == [t.response_text for t in whole.trajectories]
    np.testing.assert_array_equal(from_parts.trajectories[0].behavior_logprobs,
                                  whole.trajectories[0].behavior_logprobs)
    phases = ray.get(free.timing.remote())
    assert all(phases[f"weights_{phase}"] > 0 for phase in ("hand_off_s", "engine_load_s", "cache_reset_s"))
    ray.get(free.update_weights.remote(current + 4, ray.put(original)))  # for the tests after this one


def moved(state: dict[str, torch.Tensor], scale: float,
          generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every floating-point tensor plus scale x N(0, 1) noise; tied names stay one tensor."""
    out, by_storage = {}, {}
    for name, tensor in state.items():
        key = tensor.data_ptr()
        if key not in by_storage:
            by_storage[key] = (tensor + scale * torch.randn(tensor.shape, generator=generator)
                               if tensor.is_floating_point() else tensor)
        out[name] = by_storage[key]
    return out


def test_each_version_loaded_is_the_one_served(free, sample, tiny_cfg, tiny_model_path):
    """Successive versions through the training route (the learner's parts into the engine's
    shared buffer), each moving every weight a little as an optimizer step does, with the tied
    embeddings tied as the learner has them: after each load the engine's log-probs are
    transformers' with exactly those weights, and not with the version before. Checking one load,
    or loads of untied copies, missed a route whose engine kept its tied lm_head at the weights it
    started with (tests/integration/test_learning.py stopped learning: approx_kl 0.06-0.5)."""
    original = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path).state_dict()
    embeddings = original["model.language_model.embed_tokens.weight"]
    assert original["lm_head.weight"].data_ptr() == embeddings.data_ptr()  # tied
    generator = torch.Generator().manual_seed(2)
    current = ray.get(free.ready.remote())
    versions = [original]  # what the engine holds now: the tests before end on the original
    for k in range(1, 4):
        versions.append(moved(versions[-1], 0.02, generator))
        parts = [ray.put(part) for part in split(versions[-1], 2)]  # as LearnerGroup.publish_weights does
        assert ray.get(free.update_weights.remote(current + k, parts)) == current + k
        served, before = hf_model(tiny_model_path, versions[-1]), hf_model(tiny_model_path, versions[-2])
        for traj in generate(free, sample, f"version-{k}")[1].trajectories:
            sampled = np.flatnonzero(traj.loss_mask == 1)
            engine = traj.behavior_logprobs[sampled]
            error = np.abs(engine - hf_logprobs(tiny_model_path, tiny_cfg, traj, served)[sampled])
            stale = np.abs(engine - hf_logprobs(tiny_model_path, tiny_cfg, traj, before)[sampled])
            # Measured (fp32): at the start-up weights 1.4-1.9e-3 mean, 7.5e-3 max (the forced test
            # above); after loads 1, 2, 3: 7-9e-3, 1.1-1.3e-2, 1.9-2.2e-2 mean, 8.7e-2 max (a residual
            # growing with the versions, not explained yet; see docs/cluster.md); against the version
            # before 0.26-0.54 mean; the route that left the tied lm_head out: 0.13-0.26 mean.
            assert error.mean() < 0.2 * stale.mean() and error.max() < 0.2, (k, error.mean(), stale.mean())
    ray.get(free.update_weights.remote(current + 4, ray.put(original)))  # for the tests after this one


def wait_for_span(actor, name: str, timeout_s: float = 60.0) -> list:
    """The actor's spans until one named `name` has ended (spans are recorded when they end)."""
    deadline, spans = time.monotonic() + timeout_s, []
    while not any(span.name == name for span in spans):
        assert time.monotonic() < deadline, f"no {name!r} span within {timeout_s} s"
        time.sleep(0.05)
        spans += ray.get(actor.take_spans.remote())
    return spans


def test_groups_in_flight_finish_on_the_old_weights(free, sample, tiny_model_path):
    """A group in flight (images decoded: it has started) finishes on the weights it started on; a
    group sent after the update runs on the new ones."""
    original = ray.put(Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path).state_dict())
    current = ray.get(free.ready.remote())
    ray.get(free.take_spans.remote())
    first, _ = free.generate_group.remote(sample, "inflight-a")
    wait_for_span(free, "decode images")
    update = free.update_weights.remote(current + 1, original)
    second, _ = free.generate_group.remote(sample, "inflight-b")
    assert ray.get(first).policy_version == current
    assert ray.get(update) == current + 1
    assert ray.get(second).policy_version == current + 1


def test_a_group_for_a_version_not_loaded_yet_decodes_then_waits_for_it(free, sample, tiny_model_path):
    """A request for a version the actor does not hold yet, without its weights (a broadcast brings
    them): it decodes its images at once, then waits; it generates on that version once an update
    brings it, never on the one before."""
    original = ray.put(Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path).state_dict())
    current = ray.get(free.ready.remote())
    ray.get(free.take_spans.remote())
    ahead, _ = free.generate_group.remote(sample, "ahead", PolicyWeights(current + 1, None))
    spans = wait_for_span(free, "decode images")
    assert [span.name for span in spans] == ["decode images"]  # decoded, and no generation yet
    assert not ray.wait([ahead], timeout=1.0)[0]
    assert ray.get(free.update_weights.remote(current + 1, original)) == current + 1
    assert ray.get(ahead).policy_version == current + 1
    assert "generate" in [span.name for span in ray.get(free.take_spans.remote())]


def test_actor_metrics_reach_rays_prometheus_endpoint(forced, sample):
    actor, _ = forced
    generate(actor, sample, "metrics-0")
    # the forced answers are right: this actor's accuracy series reads 1 (other actors' read 0)
    text = scrape_ray_metrics(lambda text: 1.0 in samples(text, "zoomrl_accuracy"))
    assert 1.0 in samples(text, "zoomrl_accuracy")
    assert samples(text, "zoomrl_rollout_tokens_per_s")
