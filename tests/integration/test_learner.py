"""One learner rank in this process (world size 1, FSDP2 over gloo) against the plain reference.

Tolerances: fp32 on CPU; the learner packs sequences and sums micro-batches in another order
than the reference, so values agree to float rounding: loss to 1e-5 relative, gradients to
2e-5 relative + 1e-7 absolute of each tensor's scale.
"""

from __future__ import annotations

import ipaddress
import os

import pytest
import torch
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

import learner.worker
from core.config import ConfigError, load_config
from learner.attention import packed_attention, packed_sdpa_attention
from tests.helpers.learner import (
    assert_grads_close,
    forward_backward,
    full_state,
    gradients,
    listening,
    local_worker,
    reference_grads,
    shard_of,
)


@pytest.fixture(scope="module")
def plain(tiny_model_path):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path, dtype=torch.float32)
    return model, AutoProcessor.from_pretrained(tiny_model_path)


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
def test_micro_batches_equal_one_batch_equal_plain_reference(tiny_model_path, groups, plain, loss_agg):
    """Loss and gradients: 1 micro-batch == 4+ micro-batches == the plain unpacked reference."""
    model, processor = plain
    with local_worker(tiny_model_path, f"learner.loss_agg={loss_agg}") as worker:
        want_loss, want_grads = reference_grads(model, processor, groups, worker.learner)
        for budget in (100_000, 500):
            shard = shard_of(worker, groups, budget)
            assert len(shard.micro_batches) == 1 if budget > 10_000 else len(shard.micro_batches) >= 4
            stats = forward_backward(worker, shard)
            assert stats["loss"] == pytest.approx(want_loss, rel=1e-5), budget
            assert_grads_close(gradients(worker), want_grads)


def test_no_reference_model_without_kl(tiny_model_path, groups, monkeypatch):
    loads = []
    original = learner.worker.load_policy
    monkeypatch.setattr(learner.worker, "load_policy", lambda path: loads.append(path) or original(path))
    with local_worker(tiny_model_path) as worker:  # kl_coef 0: the recipe's default
        assert worker.learner.kl_coef == 0
        assert worker.reference is None and len(loads) == 1
        assert "kl_ref" not in worker.train_step([shard_of(worker, groups, 4096)])


def test_k3_kl_to_reference_model(tiny_model_path, groups, monkeypatch):
    loads = []
    original = learner.worker.load_policy
    monkeypatch.setattr(learner.worker, "load_policy", lambda path: loads.append(path) or original(path))
    with local_worker(tiny_model_path, "learner.kl_coef=0.5", "learner.lr=1e-2") as worker:
        assert worker.reference is not None and len(loads) == 2
        shard = shard_of(worker, groups, 4096)
        first = worker.train_step([shard])
        assert first["kl_ref"] == 0.0  # the reference starts equal to the policy
        second = forward_backward(worker, shard)
    assert second["kl_ref"] > 1e-4  # the policy moved, the reference did not
    with local_worker(tiny_model_path, "learner.lr=1e-2") as worker:
        worker.train_step([shard])
        no_kl = forward_backward(worker, shard)
    # the same step without KL: the loss differs by exactly kl_coef * KL (same policy weights)
    assert second["loss"] - no_kl["loss"] == pytest.approx(0.5 * second["kl_ref"], rel=1e-4)


def test_activation_checkpointing_recomputes_and_keeps_gradients(tiny_model_path, groups):
    calls, grads = {False: [], True: []}, {}
    for enabled in (False, True):
        with local_worker(tiny_model_path, f"learner.activation_checkpointing={enabled}") as worker:
            layer = worker.model.model.language_model.layers[0]
            # a pre-hook: non-reentrant checkpointing stops recomputing once it has what backward
            # needs, so a post-forward hook would not see the recomputation
            handle = layer.register_forward_pre_hook(lambda *_, seen=calls[enabled]: seen.append(1))
            forward_backward(worker, shard_of(worker, groups, 100_000))
            handle.remove()
            grads[enabled] = gradients(worker)
    assert len(calls[False]) == 1 and len(calls[True]) == 2  # forward, then again in backward
    assert_grads_close(grads[True], grads[False])


def test_ratio_against_recomputed_logprobs(tiny_model_path, groups):
    """Behaviour log-probs carry noise (clipping happens); against the learner's own log-probs
    the first update's ratio is exactly 1: nothing clipped, no KL."""
    with local_worker(tiny_model_path) as worker:
        behavior = worker.train_step([shard_of(worker, groups, 4096)])
    with local_worker(tiny_model_path, "learner.ratio_against=recompute") as worker:
        recompute = worker.train_step([shard_of(worker, groups, 4096)])
    assert behavior["clip_fraction"] > 0.05 and behavior["approx_kl"] > 1e-3
    assert recompute["clip_fraction"] == 0 and recompute["approx_kl"] == pytest.approx(0, abs=1e-7)


def test_train_step_metrics_and_update(tiny_model_path, groups):
    with local_worker(tiny_model_path, "learner.updates_per_step=1") as worker:
        before = {k: v.clone() for k, v in full_state(worker)[0].items()}
        shard = shard_of(worker, groups, 500)
        metrics = worker.train_step([shard])
        after = full_state(worker)[0]
    assert metrics["step"] == 1 and metrics["optimizer_steps"] == 1
    assert metrics["micro_batches"] == len(shard.micro_batches)
    assert 0 < metrics["clip_fraction"] < 1 and metrics["approx_kl"] > 0 and metrics["entropy"] > 1
    assert metrics["grad_norm"] > 0 and metrics["nonfinite_grad"] == 0
    assert metrics["learner_tokens_per_s"] > 0 and metrics["learner_peak_memory_bytes"] > 2**20
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) == len(before)  # AdamW moves every parameter


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_mixed_precision_tracks_fp32(tiny_model_path, groups, plain):
    """On a GPU (NCCL, bf16 compute, fp32 master weights and reduction) the loss and gradients
    follow the fp32 reference to bf16 accuracy: loss 2e-2 relative, gradient direction > 0.99."""
    model, processor = plain
    gpu = ["learner.num_gpus_per_rank=1", "learner.mixed_precision=true"]
    with local_worker(tiny_model_path, *gpu) as worker:
        assert worker.device.type == "cuda"
        want_loss, want_grads = reference_grads(model, processor, groups, worker.learner)
        stats = forward_backward(worker, shard_of(worker, groups, 500))
        grads = gradients(worker)
    assert stats["loss"] == pytest.approx(want_loss, rel=2e-2)
    got = torch.cat([grads[name].float().flatten() for name in want_grads])
    want = torch.cat([g.flatten() for g in want_grads.values()])
    assert torch.nn.functional.cosine_similarity(got, want, dim=0) > 0.99


def test_rendezvous_and_gloo_listen_on_loopback_only(tiny_model_path, monkeypatch):
    """With the rendezvous on 127.0.0.1 (a local cluster), every socket the process group opens
    listens on loopback: the store on 127.0.0.1 (before: on "::", every interface, whatever
    address it was given), gloo's connections on the loopback interface."""
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)  # as a rank process starts
    before = listening(os.getpid())
    with local_worker(tiny_model_path):
        opened = listening(os.getpid()) - before
    assert len(opened) >= 2  # the store, and gloo's
    assert all(ipaddress.ip_address(address).is_loopback for address, _ in opened), opened


def test_offload_is_refused_for_cpu_ranks():
    """learner.offload moves state off the GPU: with CPU ranks there is nothing to move."""
    with pytest.raises(ConfigError, match="learner.offload=true .* learner.num_gpus_per_rank=0"):
        load_config("tiny-cpu", ["learner.num_gpus_per_rank=0", "learner.offload=true"])
    assert load_config("tiny-cpu", ["learner.num_gpus_per_rank=1", "learner.offload=true"]).learner.offload


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_offload_keeps_state_on_cpu_and_trains_the_same(tiny_model_path, groups):
    """With learner.offload the parameter shards, gradients and AdamW state stay on the CPU, and
    the update equals the one without (same bf16 compute; the AdamW step runs on CPU instead)."""
    gpu = ["learner.num_gpus_per_rank=1", "learner.mixed_precision=true", "learner.lr=1e-3"]
    runs = {}
    for offload in (False, True):
        with local_worker(tiny_model_path, *gpu, f"learner.offload={offload}") as worker:
            metrics = worker.train_step([shard_of(worker, groups, 500)])
            state = [t for per_param in worker.optimizer.state.values() for t in per_param.values()
                     if isinstance(t, torch.Tensor) and t.dim() > 0]
            local = [t.to_local() for t in [*worker.model.parameters(), *state]]
            runs[offload] = metrics, {t.device.type for t in local}, full_state(worker)[0]
    (plain, plain_devices, plain_weights), (offloaded, devices, weights) = runs[False], runs[True]
    assert plain_devices == {"cuda"} and devices == {"cpu"}
    assert offloaded["loss"] == pytest.approx(plain["loss"], rel=1e-3)
    assert offloaded["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-2)
    for name, value in plain_weights.items():
        assert torch.allclose(weights[name].float(), value.float(), atol=1e-5), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("causal", [True, False])
def test_gpu_varlen_attention_equals_per_sequence_sdpa(causal):
    """On CUDA in bf16, packed rows (decoder: causal per sequence; vision: bidirectional per
    window) take one varlen flash call; output and gradients match SDPA run per sequence."""
    torch.manual_seed(0)
    lengths = [5, 1, 130, 3, 64]
    total = sum(lengths)
    positions = torch.cat([torch.arange(n) for n in lengths])[None].cuda()
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32).cuda()
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = causal, 2
    bounds = ({"position_ids": positions} if causal
              else {"cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens, "max_length_q": 130})
    base = [torch.randn(1, heads, total, 64) for heads in (4, 2, 2)]  # query, key, value
    results = []
    for attend in (packed_attention, packed_sdpa_attention):
        inputs = [t.cuda().bfloat16().requires_grad_() for t in base]
        out, _ = attend(module, *inputs, None, scaling=0.125, **bounds)
        out.float().square().sum().backward()
        results.append((out.float(), [t.grad.float() for t in inputs]))
    (got, got_grads), (want, want_grads) = results
    assert got.shape == (1, total, 4, 64)
    assert torch.allclose(got, want, atol=2e-2, rtol=2e-2)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert torch.allclose(g, w, atol=5e-2, rtol=5e-2)
