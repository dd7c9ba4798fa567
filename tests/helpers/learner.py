"""Helpers for learner tests: a world-size-1 learner rank in this process, and a plain,
single-process GRPO reference to check the learner against: no FSDP, no packing, no
micro-batches, one unpacked Hugging Face forward per trajectory, and the formula written out
again here (not imported from learner/), so a shared mistake cannot hide.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator

import numpy as np
import psutil
import ray
import torch
from torch import Tensor
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor
from torch.utils._pytree import tree_map_only
from transformers import Qwen2_5_VLConfig

from core.config import LearnerConfig, load_config
from core.types import Group
from learner.batching import StepShard, make_shards, score_groups
from learner.ranks import free_port
from learner.worker import LearnerWorker
from tests.helpers.trajectories import hf_logprobs_grad

CPU_LEARNER = ["learner.num_ranks=1", "learner.num_gpus_per_rank=0", "learner.num_cpus_per_rank=1"]


@contextlib.contextmanager
def local_worker(model_path: str, *overrides: str) -> Iterator[LearnerWorker]:
    """A world-size-1 LearnerWorker (tiny-cpu config + overrides) in this process, its rendezvous
    on 127.0.0.1; it leaves the process group on exit, so the next one can start, and puts back
    GLOO_SOCKET_IFNAME (which a rank sets in its own process: `worker.keep_gloo_on_loopback`)."""
    cfg = load_config("tiny-cpu", CPU_LEARNER + list(overrides))
    gloo_interface = os.environ.get("GLOO_SOCKET_IFNAME")
    worker = LearnerWorker(cfg, model_path, rank=0, world_size=1, master_addr="127.0.0.1",
                           master_port=free_port("127.0.0.1"))
    try:
        yield worker
    finally:
        worker.close()
        os.environ.pop("GLOO_SOCKET_IFNAME", None)
        if gloo_interface is not None:
            os.environ["GLOO_SOCKET_IFNAME"] = gloo_interface


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process pid listens on."""
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN}


def shard_of(worker: LearnerWorker, groups: list[Group], token_budget: int) -> StepShard:
    """All of groups as one rank's share of one optimizer step."""
    cfg = worker.learner
    items = [i for g in score_groups(groups, cfg.norm_adv_by_std, cfg.filter_zero_adv_groups) for i in g]
    return make_shards(items, 1, token_budget)[0]


# A rank seen from a test: these take the LearnerWorker, in this process or in a rank's Ray actor
# through `actor.__ray_call__.remote(full_state)`. On several ranks call every rank at once: the
# gathers inside are collectives.


def forward_backward(worker: LearnerWorker, shard: StepShard) -> dict[str, float]:
    """Gradients of one shard's loss, accumulated over its micro-batches (no optimizer step), as
    `LearnerWorker.train_step` computes them; returns the loss statistics summed over ranks."""
    return worker._accumulate(worker._prepare(shard), shard)


def gradients(worker: LearnerWorker) -> dict[str, Tensor]:
    """Full gradients of the last backward on rank 0 ({} elsewhere), by parameter name."""
    grads = {}
    for name, param in worker.model.named_parameters():
        grad = param.grad.full_tensor() if isinstance(param.grad, DTensor) else param.grad
        if worker.rank == 0:
            grads[name] = grad.cpu()
    return grads


def full_state(worker: LearnerWorker) -> tuple[dict[str, Tensor], dict]:
    """Full model and optimizer state dicts on rank 0, CPU ({} elsewhere); checkpoints stay
    sharded. Before the first update the optimizer part is {}: asking torch for it then would run
    a fake AdamW step that shifts its bias correction."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    optim = {}
    if worker.optimizer.state:
        optim = get_optimizer_state_dict(worker.model, worker.optimizer, options=options)
    state = (get_model_state_dict(worker.model, options=options), optim)
    # copies: on one CPU rank the gathered tensors are the live parameters themselves
    return tree_map_only(Tensor, torch.clone, state)


def on_ranks(actors: list, fn, *per_rank: list) -> list:
    """fn(worker, *args) in every rank's Ray actor at once, args[i] taken from each per_rank list;
    the results by rank."""
    calls = zip(actors, *per_rank, strict=True) if per_rank else ((actor,) for actor in actors)
    return ray.get([actor.__ray_call__.remote(fn, *args) for actor, *args in calls])


def without_images(group: Group, config: Qwen2_5_VLConfig) -> Group:
    """A copy of group as rows without images give it (a text-only row of a train file): every
    <|vision_start|> ... <|vision_end|> span cut from each trajectory's tokens, loss mask and
    behaviour log-probs, no images, and the group id suffixed "-text"."""
    group = copy.deepcopy(group)
    group.group_id += "-text"
    for traj in group.trajectories:
        ids = traj.input_ids
        is_end = ids == config.vision_end_token_id
        depth = np.cumsum(ids == config.vision_start_token_id) - np.cumsum(is_end) + is_end  # >0: in a span
        keep = depth == 0
        traj.prompt_len = int(keep[:traj.prompt_len].sum())
        traj.input_ids, traj.loss_mask = ids[keep], traj.loss_mask[keep]
        traj.behavior_logprobs = traj.behavior_logprobs[keep]
        traj.images, traj.group_id = [], group.group_id
    return group


def reference_logprobs(model, processor, traj, temperature: float) -> Tensor:
    """`hf_logprobs_grad`, or for a trajectory without images the plain text forward (no pixels)."""
    if traj.images:
        return hf_logprobs_grad(model, processor, traj, temperature)
    ids = torch.as_tensor(traj.input_ids)[None]  # (1, T)
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float() / temperature  # (T-1, V)
    return torch.nn.functional.pad(logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1), (1, 0))


def assert_grads_close(grads: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """Same names; each tensor equal to 2e-5 relative (elementwise and of the tensor's scale)."""
    assert grads.keys() == expected.keys()
    for name, want in expected.items():
        scale = float(want.abs().max())
        assert torch.allclose(grads[name], want, rtol=2e-5, atol=1e-7 + 2e-5 * scale), name


def assert_same_state(got: tuple[dict, dict], want: tuple[dict, dict]) -> None:
    """Model and optimizer state dicts (as `full_state` gives) bit-identical."""
    def flatten(tree, prefix=""):
        if isinstance(tree, dict):
            return [kv for key in sorted(tree, key=str) for kv in flatten(tree[key], f"{prefix}/{key}")]
        if isinstance(tree, list | tuple):
            return [kv for i, item in enumerate(tree) for kv in flatten(item, f"{prefix}/{i}")]
        return [(prefix, tree)]
    got_items, want_items = flatten(got), flatten(want)
    assert [k for k, _ in got_items] == [k for k, _ in want_items]
    for (key, a), (_, b) in zip(got_items, want_items, strict=True):
        same = torch.equal(a, b) if isinstance(a, Tensor) else a == b
        assert same, key


def advantages(rewards: np.ndarray, norm_by_std: bool) -> np.ndarray:
    """(n,) GRPO advantages of one group: (r - mean) / (unbiased std + 1e-6)."""
    centered = rewards - rewards.mean()
    return centered / (rewards.std(ddof=1) + 1e-6) if norm_by_std else centered


def reference_loss(model, processor, groups: list[Group], learner: LearnerConfig,
                   temperature: float = 1.0) -> Tensor:
    """The whole batch's GRPO loss as one differentiable scalar."""
    per_seq_sums, per_seq_counts = [], []
    for group in groups:
        rewards = np.array([t.reward for t in group.trajectories], dtype=np.float64)
        if learner.filter_zero_adv_groups and rewards.max() == rewards.min():
            continue
        for traj, adv in zip(group.trajectories, advantages(rewards, learner.norm_adv_by_std), strict=True):
            logprobs = reference_logprobs(model, processor, traj, temperature)  # (T,)
            ratio = torch.exp(logprobs - torch.tensor(traj.behavior_logprobs))
            a = float(adv)
            low, high = 1 - learner.clip_ratio_low, 1 + learner.clip_ratio_high
            loss = torch.maximum(-a * ratio, -a * ratio.clamp(low, high))
            if a < 0 and learner.dual_clip > 0:
                loss = torch.minimum(loss, torch.full_like(loss, -a * learner.dual_clip))
            mask = torch.tensor(traj.loss_mask, dtype=torch.float32)
            per_seq_sums.append((loss * mask).sum())
            per_seq_counts.append(mask.sum())
    if learner.loss_agg == "token-mean":
        return torch.stack(per_seq_sums).sum() / torch.stack(per_seq_counts).sum()
    return torch.stack([s / c for s, c in zip(per_seq_sums, per_seq_counts, strict=True)]).mean()


def reference_grads(model, processor, groups: list[Group], learner: LearnerConfig
                    ) -> tuple[float, dict[str, Tensor]]:
    """(loss, gradients by parameter name) of `reference_loss` on a plain model."""
    model.zero_grad(set_to_none=True)
    loss = reference_loss(model, processor, groups, learner)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


def reference_step(model, learner: LearnerConfig) -> float:
    """Clip the gradient norm and take one AdamW step, as the learner's config says; returns the norm."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), learner.grad_clip)
    torch.optim.AdamW(model.parameters(), lr=learner.lr, weight_decay=learner.weight_decay).step()
    return float(norm)
