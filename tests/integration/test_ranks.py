"""The learner group as it runs: 2 ranks as Ray actors, one gloo process group, FSDP2 shards.

Checked against the plain single-process reference (tests/helpers/learner.py) on real multi-turn
multimodal trajectories. Tolerances (fp32, CPU): loss 1e-5 relative; gradients 2e-5 relative of
each tensor's scale; parameters after one clipped AdamW step 1e-6 relative + 1e-7 absolute (a
first AdamW step moves each parameter by about lr = 1e-3).
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np
import pytest
import ray
import torch
from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration

from core.config import load_config
from core.tensors import assemble
from core.types import Group
from learner.batching import resolve
from learner.checkpoint import export_hf, latest_checkpoint
from learner.ranks import LearnerGroup
from tests.helpers.learner import (
    assert_grads_close,
    assert_same_state,
    forward_backward,
    full_state,
    gradients,
    listening,
    on_ranks,
    reference_grads,
    reference_step,
    without_images,
)
from tests.helpers.ray_metrics import samples, scrape_ray_metrics

OVERRIDES = [
    "learner.num_ranks=2", "learner.num_gpus_per_rank=0", "learner.num_cpus_per_rank=1",
    "learner.micro_batch_tokens=500",  # several micro-batches per rank, and fillers
    "learner.grad_clip=0.1",  # below the gradient norm: clipping is active
    "learner.lr=1e-3", "learner.filter_zero_adv_groups=true",
]


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny-cpu", OVERRIDES)


@pytest.fixture(scope="module")
def group(ray_cluster, cfg, tiny_model_path):
    learner_group = LearnerGroup(cfg, tiny_model_path)
    yield learner_group
    learner_group.shutdown()


def train(group: LearnerGroup, groups: list[Group]) -> dict:
    """An update as the driver asks for one: groups in the object store, their summaries in hand."""
    return group.train_step([ray.put(g) for g in groups], [g.summary() for g in groups])


def snapshot(group: LearnerGroup) -> tuple[dict, dict]:
    return on_ranks(group.workers, full_state)[0]


def plain_model(model_path: str, weights: dict) -> Qwen2_5_VLForConditionalGeneration:
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=torch.float32)
    model.load_state_dict(weights, strict=True)
    return model


def test_a_first_batch_filtered_out_then_a_checkpoint_at_step_0(group, groups, tmp_path):
    """What the driver does when its first batch has all-equal rewards and a checkpoint is due:
    nothing is trained, then step 0 is checkpointed (before: ValueError "no update yet") and
    resumes on both ranks to the same state, the optimizer still empty."""
    flat = copy.deepcopy(groups[0])
    for traj in flat.trajectories:
        traj.reward = 0.2
    assert train(group, [flat])["optimizer_steps"] == 0 and group.step == 0
    saved = snapshot(group)
    group.save_checkpoint(tmp_path, 0, {"stream": {"epoch": 0, "index": 1}})
    state = group.load_latest_checkpoint(tmp_path)
    assert (state.step, group.step, state.world_size, state.optimizer_state) == (0, 0, 2, False)
    assert_same_state(snapshot(group), saved)


def test_two_ranks_equal_plain_single_process(group, groups, cfg, tiny_model_path):
    """Loss and gradients of 2 FSDP2 ranks x several packed micro-batches = the plain reference;
    then the clipped AdamW step gives the same parameters."""
    assert group.step == 0  # first test on this group: its optimizer is fresh, like the reference's
    before = snapshot(group)[0]
    model, processor = plain_model(tiny_model_path, before), AutoProcessor.from_pretrained(tiny_model_path)
    want_loss, want_grads = reference_grads(model, processor, groups, cfg.learner)

    shards, filtered = group.plan([g.summary() for g in groups])
    assert filtered == 0 and [len(s) for s in shards] == [1, 1]  # one optimizer step per rank
    assert all(len(s[0].micro_batches) >= 2 for s in shards)
    by_id = {g.group_id: g for g in groups}
    for rank_shards, g in zip(shards, groups, strict=True):  # a group's trajectories on one rank
        names = {i.name for mb in rank_shards[0].micro_batches for i in mb if i.active}
        assert len(names) == len(g.trajectories) and {n.rsplit("/", 1)[0] for n in names} in (
            {groups[0].group_id}, {groups[1].group_id})
    shards = [[resolve(s[0], by_id)] for s in shards]
    stats = on_ranks(group.workers, forward_backward, [s[0] for s in shards])
    assert stats[0] == stats[1]  # summed over ranks: every rank reports the same
    assert stats[0]["loss"] == pytest.approx(want_loss, rel=1e-5)
    grads = on_ranks(group.workers, gradients)
    assert grads[1] == {}
    assert_grads_close(grads[0], want_grads)

    # the optimizer step on the learner's own gradients (AdamW divides by |g| + 1e-8, which
    # would magnify rounding differences of gradients near 1e-8 into visible parameter changes)
    for name, param in model.named_parameters():
        param.grad = grads[0][name].clone()
    want_norm = reference_step(model, cfg.learner)
    metrics = train(group, groups)
    assert metrics["step"] == 1 == group.step and metrics["groups_filtered"] == 0
    assert metrics["loss"] == pytest.approx(want_loss, rel=1e-5)
    assert metrics["grad_norm"] == pytest.approx(want_norm, rel=1e-5) and want_norm > 0.1
    after = snapshot(group)[0]
    for name, param in model.state_dict().items():
        assert torch.allclose(after[name], param, atol=1e-7, rtol=1e-6), name
        assert not torch.equal(after[name], before[name]), name


def test_one_group_on_two_ranks_is_split_between_them(group, groups, cfg, tiny_model_path):
    """Fewer groups than ranks: the group's trajectories spread over both ranks (each fetches the
    group from the object store), and the update's loss is still the plain reference's."""
    shards, _ = group.plan([groups[0].summary()])
    assert all(any(i.active for mb in s[0].micro_batches for i in mb) for s in shards)  # both train
    model, processor = plain_model(tiny_model_path, snapshot(group)[0]), AutoProcessor.from_pretrained(
        tiny_model_path)
    want_loss, _ = reference_grads(model, processor, [groups[0]], cfg.learner)
    assert train(group, [groups[0]])["loss"] == pytest.approx(want_loss, rel=1e-5)


def test_metrics_per_update(group, groups):
    ray.get([w.take_spans.remote() for w in group.workers])  # what earlier tests left
    started = time.time()
    metrics = train(group, groups)
    for spans in ray.get([w.take_spans.remote() for w in group.workers]):  # bench anatomy's lanes
        assert [s.name for s in spans] == ["check", "collate", "forward_backward", "optimizer"]
        assert all(started <= s.start <= s.end for s in spans)
        assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))  # one after another
        assert sum(s.seconds for s in spans[1:]) <= metrics["learner_seconds"]  # it times from collate
    for key in ("loss", "clip_fraction", "dual_clip_fraction", "approx_kl", "entropy", "grad_norm",
                "learner_tokens_per_s", "learner_peak_memory_bytes"):
        assert isinstance(metrics[key], float), key
    assert 0 < metrics["clip_fraction"] < 1 and metrics["approx_kl"] > 0 and metrics["entropy"] > 0
    assert metrics["learner_tokens_per_s"] > 0 and metrics["learner_peak_memory_bytes"] > 2**20
    assert metrics["optimizer_steps"] == 1 and metrics["micro_batches"] >= 2  # per rank
    assert "kl_ref" not in metrics  # kl_coef 0: no reference model
    text = scrape_ray_metrics("zoomrl_learner_tokens_per_s")  # rank 0 reports through Ray too
    assert samples(text, "zoomrl_grad_norm") and samples(text, "zoomrl_learner_tokens_per_s")[0] > 0


def test_all_equal_reward_groups_are_filtered(group, groups):
    flat = copy.deepcopy(groups[0])
    for traj in flat.trajectories:
        traj.reward = 0.2
    step = group.step
    assert train(group, [flat]) == {"optimizer_steps": 0, "groups_filtered": 1, "step": step}
    assert group.step == step
    metrics = train(group, [flat, groups[1]])
    assert metrics["groups_filtered"] == 1 and group.step == step + 1


def test_a_trajectory_one_rank_refuses_stops_every_rank_before_the_update(group, groups, tiny_model_path):
    """Each rank checks the trajectories it fetched; a refusal on one reaches all (no rank waits
    in a collective the other never joins) and names the trajectory; nothing is trained."""
    broken = copy.deepcopy(groups[1])
    trajectory = broken.trajectories[2]
    pad = AutoConfig.from_pretrained(tiny_model_path).image_token_id
    trajectory.loss_mask[np.flatnonzero(trajectory.input_ids == pad)[0]] = 1
    step, before = group.step, snapshot(group)
    refused = rf"trajectory {broken.group_id}/2 .*image pad tokens"
    with pytest.raises(ray.exceptions.RayTaskError, match=refused):
        train(group, [groups[0], broken])
    assert group.step == step
    assert_same_state(snapshot(group), before)
    assert train(group, groups)["step"] == step + 1  # the ranks are still in step with each other


def test_publish_weights_through_the_object_store(group, tiny_model_path):
    weights = group.publish_weights(group.step)
    assert weights.version == group.step
    parts = ray.get(ray.get(weights.ref))  # one part per rank, each its own rows: no gather
    assert len(parts) == 2 and all(0 < part.nbytes < sum(p.nbytes for p in parts) for part in parts)
    state = assemble(parts)
    expected = snapshot(group)[0]
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) and state[k].dtype == torch.float32 for k in state)
    plain_model(tiny_model_path, state)  # HF names: loads strictly into the rollout-side model

    @ray.remote(num_cpus=0)
    def total(resolved: list[ray.ObjectRef]) -> float:  # a top-level ref arrives as the parts' refs
        return float(sum(t.double().sum() for t in assemble(ray.get(resolved)).values()))

    expected_total = sum(float(t.double().sum()) for t in state.values())
    assert ray.get(total.remote(weights.ref)) == pytest.approx(expected_total)


def test_checkpoint_resume_and_export_two_ranks(group, groups, tmp_path):
    step = group.step
    path = group.save_checkpoint(tmp_path, step, {"stream": {"epoch": 1, "index": 3}})
    assert len(list((tmp_path / f"step-{step:08d}").glob("*.distcp"))) == 2  # one shard file per rank
    saved = snapshot(group)
    train(group, groups)
    continued = snapshot(group)
    state = group.load_latest_checkpoint(tmp_path)
    assert state.step == step == group.step and state.extra == {"stream": {"epoch": 1, "index": 3}}
    assert state.world_size == 2
    assert_same_state(snapshot(group), saved)
    train(group, groups)
    assert_same_state(snapshot(group), continued)
    # the 2-rank sharded checkpoint exports in one process to the same full weights
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(export_hf(latest_checkpoint(tmp_path),
                                                                         tmp_path / "hf"))
    assert all(torch.equal(t, saved[0][k]) for k, t in model.state_dict().items())
    assert str(latest_checkpoint(tmp_path)) == path
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        group.load_latest_checkpoint(tmp_path / "empty")


def test_a_rank_without_images_runs_the_same_collectives(group, groups, cfg, tiny_model_path):
    """A train file with rows with and without images: one rank gets only text trajectories, in
    fewer micro-batches (filled), the other images in every micro-batch. Each micro-batch still
    runs the vision tower (on a placeholder image where it has none, `batching.collate`), so
    both ranks run the same FSDP collectives (before: gloo aborted "147968 vs 41664"; NCCL would
    hang), and loss and gradients equal the plain reference's, which sees no placeholder."""
    mixed = [without_images(groups[0], AutoConfig.from_pretrained(tiny_model_path)), groups[1]]
    planned, _ = group.plan([g.summary() for g in mixed])
    by_id = {g.group_id: g for g in mixed}
    shards = [resolve(rank_shards[0], by_id) for rank_shards in planned]
    has_images = [[any(i.trajectory.images for i in mb) for mb in s.micro_batches] for s in shards]
    text_rank = [any(per_mb) for per_mb in has_images].index(False)
    assert all(has_images[1 - text_rank])  # the other rank: images in every micro-batch
    fillers = [sum(not any(i.active for i in mb) for mb in s.micro_batches) for s in shards]
    assert fillers[text_rank] >= 1 and fillers[1 - text_rank] == 0  # fewer micro-batches: filled

    step, before = group.step, snapshot(group)[0]
    model, processor = plain_model(tiny_model_path, before), AutoProcessor.from_pretrained(tiny_model_path)
    want_loss, want_grads = reference_grads(model, processor, mixed, cfg.learner)
    stats = on_ranks(group.workers, forward_backward, shards)
    assert stats[0] == stats[1] and stats[0]["loss"] == pytest.approx(want_loss, rel=1e-5)
    grads = on_ranks(group.workers, gradients)
    assert_grads_close(grads[0], want_grads)
    metrics = train(group, mixed)  # the whole update, as the driver asks for it
    assert metrics["step"] == step + 1 and metrics["loss"] == pytest.approx(want_loss, rel=1e-5)


def test_rendezvous_store_listens_on_the_node_address_only(group):
    """Rank 0's store listens on the rendezvous address, Ray's address of its node (127.0.0.1
    when Ray runs there), not on every interface (before: "::")."""
    address, port = group.rendezvous
    pids = ray.get([w.__ray_call__.remote(lambda self: os.getpid()) for w in group.workers])
    on_port = {(a, p) for a, p in listening(pids[0]) if p == port}
    assert on_port == {(address, port)}, on_port


class TakenFirst:
    """Stands for `_rendezvous_address` in the driver: the first port it gives is one another
    process already listens on (as when another run takes it between the pick and rank 0's bind)."""

    def __init__(self, taken: int) -> None:
        self.ports = [taken]

    def options(self, **_) -> TakenFirst:
        return self

    def remote(self) -> ray.ObjectRef:
        from learner.ranks import free_port

        return ray.put(("127.0.0.1", self.ports.pop() if self.ports else free_port("127.0.0.1")))


def test_a_rendezvous_port_taken_before_rank_0_binds_it_is_replaced(ray_cluster, cfg, tiny_model_path,
                                                                     monkeypatch):
    import socket

    import learner.ranks

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        monkeypatch.setattr(learner.ranks, "_rendezvous_address", TakenFirst(port))
        lines = []
        retried = LearnerGroup(cfg, tiny_model_path, say=lines.append)
    try:
        assert retried.rendezvous[1] != port and retried.num_parameters > 0
        assert any(f"port {port} was taken" in line for line in lines), lines
    finally:
        retried.shutdown()
