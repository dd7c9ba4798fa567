"""learner: tokens/s per rank, memory per rank and data preparation vs compute of the FSDP2
learner group, at 1 and 2 ranks (goal: sharded parameter + optimizer bytes per rank within 1.1x of
the 1-rank total / ranks).

The batch is real multi-turn multimodal trajectories built with the model's own processor (the
generator of bench/learner_packing.py: 224-1115 tokens, one image and up to one crop each), in
groups of rollout.n with varied rewards, so `LearnerGroup.train_step` runs exactly as in training
(advantages, checks, split over ranks, packing, FSDP forward/backward, AdamW). Per rank count: one
warm-up update, then --steps timed updates. Figures come from the learner's own metrics
(`learner_seconds`, `learner_prepare_seconds`, `learner_state_bytes`, `learner_peak_memory_bytes`)
and the driver's wall time around `train_step` (the difference is planning plus Ray transfer), and
the bytes per update the driver holds (the groups' summaries) against the groups' own bytes, which
go from the object store straight to the ranks.

Log-prob memory (`--logprob-lengths`, `logprob_memory`): peak memory of one update of ONE long
sequence on the tiny model widened to Qwen's 152,064-token vocabulary, with the full-vocabulary
log-probs `token_logprobs` computed before (the "before" figure) and chunked (after), each run in
a fresh process; the goal is a peak that grows with the chunk, not with length x vocabulary.
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from bench.common import Result, spread
from core.config import Config
from zoomrl.cluster import start_ray

NAME = "learner"
GOAL_SHARDING = 1.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts (default 1 2)")
    parser.add_argument("--groups", type=int, default=4, help="groups of rollout.n trajectories per update")
    parser.add_argument("--steps", type=int, default=3, help="timed updates per rank count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logprob-lengths", type=int, nargs="*", default=[1024, 2048],
                        help="sequence lengths of the log-prob memory runs (none: skip them)")
    parser.add_argument("--logprob-chunks", type=int, nargs="+", default=None,
                        help="chunk sizes measured beside the full-vocabulary reference (default: "
                             "learner.model.LOGPROB_CHUNK_TOKENS and 256)")
    parser.add_argument("--no-ranks", action="store_true", help="skip the learner-group runs")


def make_groups(model_path: str, num_groups: int, n: int, seed: int) -> list:
    """num_groups groups of n real trajectories with rewards that differ within each group."""
    from transformers import AutoProcessor

    from bench.learner_packing import make_trajectories
    from core.types import Group, Sample

    processor = AutoProcessor.from_pretrained(model_path)
    trajectories = make_trajectories(processor, num_groups * n, seed)
    rng = np.random.default_rng(seed)
    groups = []
    for g in range(num_groups):
        members = trajectories[g * n:(g + 1) * n]
        for i, traj in enumerate(members):
            traj.group_id, traj.reward = f"bench-{g}", float(i % 2) + float(rng.random())
        sample = Sample(id=f"bench:{g}", data_source="synth_vstar", messages=[], images=[],
                        question="q", answer="A")
        groups.append(Group(f"bench-{g}", sample, members))
    return groups


def measure_ranks(cfg: Config, model_path: str, groups: list, ranks: int, steps: int) -> dict:
    from learner.ranks import LearnerGroup

    cfg = OmegaConf.merge(cfg, {"learner": {"num_ranks": ranks}})
    learner = LearnerGroup(cfg, model_path)
    try:
        import ray

        refs, summaries = [ray.put(g) for g in groups], [g.summary() for g in groups]
        plan_start = time.perf_counter()
        learner.plan(summaries)
        plan_s = time.perf_counter() - plan_start
        learner.train_step(refs, summaries)  # warm-up: first-call allocations, gloo connections
        records = []
        for _ in range(steps):
            start = time.perf_counter()
            metrics = learner.train_step(refs, summaries)
            records.append(metrics | {"driver_seconds": time.perf_counter() - start})
    finally:
        learner.shutdown()
    tokens = [r["learner_tokens_per_s"] for r in records]
    return {
        "ranks": ranks, "num_parameters": learner.num_parameters,
        "learner_tokens_per_s": spread(tokens),
        "tokens_per_s_per_rank": spread([t / ranks for t in tokens]),
        "learner_seconds": spread([r["learner_seconds"] for r in records]),
        "prepare_seconds": spread([r["learner_prepare_seconds"] for r in records]),
        "prepare_share": spread([r["learner_prepare_seconds"] / r["learner_seconds"] for r in records]),
        "driver_seconds": spread([r["driver_seconds"] for r in records]),
        "plan_seconds": plan_s,
        "state_bytes_per_rank": records[-1]["learner_state_bytes"],
        "peak_memory_bytes_per_rank": records[-1]["learner_peak_memory_bytes"],
        "micro_batches_per_rank": records[-1]["micro_batches"],
    }


def run(args: argparse.Namespace, cfg: Config) -> Result:
    from zoomrl.run_setup import ensure_model

    model_path = ensure_model(cfg.model)
    figures: dict = {}
    parts: list[str] = []
    notes: list[str] = []
    if not args.no_ranks:
        figures, parts, notes = _ranks(args, cfg, model_path)
    if args.logprob_lengths:
        from learner.model import LOGPROB_CHUNK_TOKENS

        chunks = args.logprob_chunks or [LOGPROB_CHUNK_TOKENS, 256]
        figures["logprob_memory"] = memory = logprob_memory(model_path, args.logprob_lengths, chunks)
        parts.append("log-prob update peak (MiB) " + ", ".join(
            f"L={r['length']} {r['path']}{'' if r['chunk_tokens'] is None else r['chunk_tokens']}: "
            f"{r['peak_bytes'] / 2**20:.0f}" for r in memory["runs"]))
        notes.append("logprob_memory: " + memory["method"])
    return Result(figures, "; ".join(parts), notes)


def _ranks(args: argparse.Namespace, cfg: Config, model_path: str) -> tuple[dict, list[str], list[str]]:
    """The learner-group runs at each rank count: (figures, summary parts, notes)."""
    groups = make_groups(model_path, args.groups, cfg.rollout.n, args.seed)
    start_ray(OmegaConf.merge(cfg, {"learner": {"num_ranks": max(args.ranks)}}))
    per_ranks = [measure_ranks(cfg, model_path, groups, ranks, args.steps) for ranks in args.ranks]
    lengths = [len(t.input_ids) for g in groups for t in g.trajectories]
    figures: dict = {"trajectories": len(lengths), "tokens_per_update": sum(lengths),
                     "length_min": min(lengths), "length_max": max(lengths),
                     "micro_batch_tokens": cfg.learner.micro_batch_tokens, "by_ranks": per_ranks,
                     # what the driver holds per update: the summaries it plans from; the groups
                     # themselves go from the object store to the ranks
                     "driver_bytes_per_update": len(pickle.dumps([g.summary() for g in groups])),
                     "group_bytes_per_update": len(pickle.dumps(groups))}
    single = next((r for r in per_ranks if r["ranks"] == 1), None)
    parts = [f"{r['ranks']} rank(s): {r['tokens_per_s_per_rank']['median']:.0f} tok/s/rank, "
             f"state {r['state_bytes_per_rank'] / 2**20:.1f} MiB/rank, "
             f"peak RSS {r['peak_memory_bytes_per_rank'] / 2**30:.2f} GiB/rank, "
             f"prepare {100 * r['prepare_share']['median']:.0f}%" for r in per_ranks]
    parts.append(f"driver holds {figures['driver_bytes_per_update'] / 2**10:.0f} KiB of the "
                 f"{figures['group_bytes_per_update'] / 2**20:.1f} MiB of groups per update")
    if single is not None:
        for r in per_ranks:
            r["state_vs_ideal"] = r["state_bytes_per_rank"] / (single["state_bytes_per_rank"] / r["ranks"])
        worst = max(per_ranks, key=lambda r: r["state_vs_ideal"])
        figures["sharding_ratio_worst"] = worst["state_vs_ideal"]
        met = "met" if worst["state_vs_ideal"] <= GOAL_SHARDING else "MISSED"
        parts.append(f"sharded state {worst['state_vs_ideal']:.3f}x of total/ranks (goal <= "
                     f"{GOAL_SHARDING}: {met})")
    notes = ["Peak memory on CPU is the process's peak RSS (runtime, libraries and activations "
             "included), so it does not halve with ranks; learner_state_bytes is the sharded part."]
    return figures, parts, notes


# --- log-prob memory: one update of one long sequence at Qwen's vocabulary size --------------

QWEN_VOCAB = 152064  # Qwen2.5-VL's vocabulary (config.json vocab_size)


def logprob_memory(model_path: str, lengths: list[int], chunks: list[int]) -> dict:
    """Peak memory of one update (forward, backward, AdamW step) of one sequence of each length,
    on the tiny model widened to Qwen's vocabulary: the full-vocabulary computation that
    `token_logprobs` replaced, then chunked at each size. Each run is a fresh process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    runs = [(length, chunk) for length in lengths for chunk in [None, *chunks]]
    results = []
    for length, chunk in runs:  # one process each: no run inherits another's heap
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results.append(pool.submit(update_peak_bytes, model_path, length, chunk).result())
    return {"vocab_size": QWEN_VOCAB, "runs": results,
            "method": "peak RSS during the update minus RSS just before it (Linux: VmHWM reset "
                      "through /proc/self/clear_refs); torch's CPU allocator returns tensors of "
                      "this size to the system on free, so RSS follows the live tensors"}


def update_peak_bytes(model_path: str, length: int, chunk_tokens: int | None) -> dict:
    """In a fresh process: one update of a `length`-token text sequence (and the placeholder
    image every micro-batch carries); chunk_tokens None = the full-vocabulary reference."""
    import torch
    from transformers import AutoConfig, AutoImageProcessor, Qwen2_5_VLForConditionalGeneration

    from core.types import Trajectory
    from learner.batching import TrainItem, collate
    from learner.model import token_logprobs, with_packed_attention

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_path)
    config.text_config.vocab_size = QWEN_VOCAB
    model = with_packed_attention(Qwen2_5_VLForConditionalGeneration(config)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    image_processor = AutoImageProcessor.from_pretrained(model_path)

    def batch_of(tokens: int):
        ids = torch.randint(1000, QWEN_VOCAB, (tokens,)).numpy()  # above every special token id
        traj = Trajectory(sample_id="s", group_id="g", input_ids=ids, loss_mask=np.ones(tokens, np.int8),
                          behavior_logprobs=np.zeros(tokens, np.float32), images=[], policy_version=0,
                          end_reason="answer", prompt_len=0)
        return collate([TrainItem(traj, 1.0, "g/0")], image_processor, model)

    def update(batch) -> None:
        if chunk_tokens is None:
            logprobs, _ = full_vocabulary_logprobs(model, batch, 1.0)
        else:
            logprobs, _ = token_logprobs(model, batch, 1.0, with_entropy=True, chunk_tokens=chunk_tokens)
        (-(logprobs * batch.loss_mask).sum() / batch.loss_mask.sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    update(batch_of(64))  # AdamW state and first-call allocations, outside the measurement
    batch = batch_of(length)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    start = time.perf_counter()
    update(batch)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return {"length": length, "chunk_tokens": chunk_tokens,
            "path": "full" if chunk_tokens is None else "chunked",
            "peak_bytes": (peak - before) * 1024, "logits_bytes_one_fp32_copy": 4 * length * QWEN_VOCAB,
            "seconds": seconds}


def full_vocabulary_logprobs(model, batch, temperature: float):
    """token_logprobs as it was before chunking (the "before" figure): (1, L-1, V) fp32 logits,
    their temperature copy, and the entropy's softmax."""
    import torch

    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                   pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw,
                   use_cache=False).logits[:, :-1].float() / temperature
    log_norm = logits.logsumexp(dim=-1)
    logprobs = logits.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1) - log_norm
    with torch.no_grad():
        entropy = log_norm - (logits.softmax(dim=-1) * logits).sum(dim=-1)
    pad = torch.nn.functional.pad
    return pad(logprobs, (1, 0)), pad(entropy, (1, 0))


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: peak since the last reset)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])
