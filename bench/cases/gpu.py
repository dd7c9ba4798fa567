"""gpu: the one-GPU check of a Qwen2.5-VL-7B-shaped model (random weights, no download): vLLM
rollout tokens/s on multi-turn zoom trajectories, learner tokens/s and MFU of one bf16 FSDP2
update, peak memory, and weight-sync seconds. Without CUDA: the CPU parts only.

Shape: `qwen25_vl_7b_config` writes the dimensions of Qwen/Qwen2.5-VL-7B-Instruct's public
config.json (text: hidden 3584, 28 layers, 28 heads, 4 KV heads, MLP 18944, vocabulary 152064,
untied lm_head, mrope sections 16/24/24; vision: 32 blocks, width 1280, 16 heads, MLP 3420,
output 3584, windows of 112 px, full attention in blocks 7/15/23/31) onto transformers'
`Qwen2_5_VLConfig`, with the special-token ids of the tiny model's tokenizer (its processor and
chat template are reused, so the real rollout code runs unchanged; sampled ids above the tokenizer's
~500 entries decode to nothing).

On a CUDA machine (goal: all of it within 8 minutes on one GPU), stages in order, each timed,
each can be left out with --skip:
- build: random bf16 weights made on the GPU, saved as a Hugging Face folder (the full model for
  vLLM; a copy with --learner-layers decoder layers for the learner, see below);
- rollout: `bench.cases.rollout.generate` (one vLLM actor, RolloutSession, the first turn scripted
  to zoom, so every trajectory is multi-turn with a real crop), response tokens/s;
- learner: one warm-up and one timed `LearnerWorker.train_step` in this process (world size 1,
  NCCL, bf16 compute, fp32 master weights and AdamW), tokens/s, model FLOPs/s and MFU against the
  GPU's dense bf16 peak, peak CUDA memory. The full 8.3B model's fp32 weights, gradients and AdamW
  state (16 bytes per parameter, 133 GB) fit neither one GPU nor, offloaded, 128 GB of host
  memory, so the learner model keeps every vision block and the first --learner-layers decoder
  layers (MFU counts exactly the FLOPs of the model that ran);
- weight_sync: `bench.cases.weight_sync.measure_size` on the full model: the route training uses
  (the learner's parts through the object store into the engine's shared buffer, vLLM's
  weight-transfer API), one learner rank and one engine sharing the GPU (0.5 GPU each); not a
  CUDA IPC or NCCL route, which zoomrl does not have.

Without CUDA (CI): the config is built and checked against the published parameter count, the
FLOPs/MFU arithmetic runs on it, and a dry run trains the tiny model (the same structure at tiny
dimensions) for one update in this process on CPU, reporting its tokens/s and model FLOPs/s; the
record says which stages were skipped and why.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from bench.common import Result
from core.config import Config, load_config

NAME = "gpu"
STAGES = ("rollout", "learner", "weight_sync")
PUBLISHED_PARAMETERS = 8_292_166_656  # Qwen2.5-VL-7B-Instruct (its model card: 8.29B)
# Dense bf16 peak of one GPU, FLOP/s (no sparsity), by a substring of torch's device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
                   "L40S": 362e12, "L40": 181e12, "A10": 125e12}
TEXT_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
               rms_norm_eps=1e-6, use_sliding_window=False, sliding_window=32768, max_window_layers=28,
               rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                "mrope_section": [16, 24, 24]})
VISION_7B = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                 patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                 fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--learner-layers", type=int, default=4,
                        help="decoder layers of the learner's model on one GPU (the full model's "
                             "training state does not fit one; MFU is of the model that ran)")
    parser.add_argument("--prompts", type=int, default=4, help="rollout prompts (groups of rollout.n)")
    parser.add_argument("--learner-groups", type=int, default=4,
                        help="groups of 8 trajectories in the learner's update (4: about 20k tokens)")
    parser.add_argument("--skip", nargs="*", choices=STAGES, default=[], help="GPU stages to leave out")
    parser.add_argument("--workdir", default=None, help="where the random-weight folders go (default: a "
                                                        "temporary folder, removed at the end)")


def qwen25_vl_7b_config(tiny_path: str, text_layers: int | None = None):
    """Qwen2.5-VL-7B-Instruct's dimensions with the special-token ids of the tiny model's tokenizer;
    text_layers keeps only the first that many decoder layers."""
    from transformers import AutoConfig, Qwen2_5_VLConfig

    tiny = AutoConfig.from_pretrained(tiny_path)
    ids = {key: getattr(tiny.text_config, key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    text = dict(TEXT_7B, **ids)
    if text_layers is not None:
        text.update(num_hidden_layers=text_layers, max_window_layers=text_layers)
    special = {key: getattr(tiny, key) for key in
               ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    return Qwen2_5_VLConfig(text_config=text, vision_config=VISION_7B, tie_word_embeddings=False, **special)


def count_parameters(config) -> dict[str, int]:
    """Parameters by part, from the model built on the meta device (no memory, no weights)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    parts = {"vision": model.model.visual, "embeddings": model.model.language_model.embed_tokens,
             "decoder": model.model.language_model.layers, "lm_head": model.lm_head}
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    return counts | {"total": sum(p.numel() for p in model.parameters())}


def train_flops(config, counts: dict[str, int], text_lengths: list[int], image_patches: list[int]) -> float:
    """Model FLOPs of one forward + backward (3x forward; activation recomputation not counted, the
    usual MFU convention) over sequences of text_lengths tokens and images of image_patches patches.

    counts: `count_parameters(config)`. Per text token: 2 x (decoder + lm_head parameters) for
    the matmuls, plus causal attention, 2 x 2 x hidden x T / 2 per layer and token (scores and
    values over the T/2 earlier tokens on average). Per image patch: 2 x vision parameters, plus
    attention over its window (windowed blocks) or whole image (full blocks). Embedding lookups
    cost no FLOPs.
    """
    text, vision = config.text_config, config.vision_config
    forward = sum(2 * (counts["decoder"] + counts["lm_head"]) * t
                  + 2 * text.hidden_size * t * t * text.num_hidden_layers for t in text_lengths)
    window = (vision.window_size // vision.patch_size) ** 2  # patches in one attention window
    full = len(vision.fullatt_block_indexes)
    for patches in image_patches:
        forward += 2 * counts["vision"] * patches
        attended = full * patches + (vision.depth - full) * min(window, patches)  # keys per query, summed
        forward += 4 * vision.hidden_size * patches * attended
    return 3.0 * forward


def peak_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak FLOP/s of the named GPU, None when unknown (no MFU then)."""
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if device_name and key in device_name), None)


def learner_update(cfg: Config, model_path: str, groups: list, warm_up: bool) -> dict:
    """One timed update (after an untimed one with warm_up) of a world-size-1 learner in this
    process, on all of groups: tokens/s, model FLOPs/s (`train_flops` of the trajectories) and
    peak memory."""
    from transformers import AutoConfig

    from learner.batching import make_shards, score_groups
    from learner.ranks import free_port
    from learner.worker import LearnerWorker

    worker = LearnerWorker(cfg, model_path, rank=0, world_size=1, master_addr="127.0.0.1",
                           master_port=free_port("127.0.0.1"))
    try:
        learner = cfg.learner
        items = [i for g in score_groups(groups, learner.norm_adv_by_std, False) for i in g]
        shard = make_shards(items, 1, learner.micro_batch_tokens)[0]
        if warm_up:  # first-call allocations, kernel selection
            worker.train_step([shard])
        metrics = worker.train_step([shard])
    finally:
        worker.close()
    trajectories = [t for g in groups for t in g.trajectories]
    patches = [im.shape[0] * im.shape[1] // 14**2 for t in trajectories for im in t.images]
    config = AutoConfig.from_pretrained(model_path)
    flops = train_flops(config, count_parameters(config), [len(t.input_ids) for t in trajectories], patches)
    seconds = metrics["learner_seconds"]
    return {"tokens_per_update": sum(len(t.input_ids) for t in trajectories),
            "learner_tokens_per_s": metrics["learner_tokens_per_s"], "learner_seconds": seconds,
            "model_flops_per_update": flops, "model_flops_per_s": flops / seconds,
            "peak_memory_bytes": metrics["learner_peak_memory_bytes"],
            "state_bytes": metrics["learner_state_bytes"], "micro_batches": metrics["micro_batches"]}


def run(args: argparse.Namespace, cfg: Config) -> Result:
    import torch

    from bench.cases.learner import make_groups
    from zoomrl.run_setup import ensure_model

    tiny_path = ensure_model(load_config("tiny-cpu").model)
    config = qwen25_vl_7b_config(tiny_path)
    counts = count_parameters(config)
    figures: dict = {"parameters": counts, "parameters_vs_published": counts["total"] / PUBLISHED_PARAMETERS,
                     "config": {"text": TEXT_7B, "vision": VISION_7B}}
    # the arithmetic on one typical update: 16 trajectories of 2,000 text tokens, two images each
    example = train_flops(config, counts, [2000] * 16, [1024, 256] * 16)
    figures["example_flops"] = {"what": "16 trajectories x 2000 tokens, images of 1024 and 256 patches",
                                "model_flops": example, "seconds_at_40pct_mfu_h100": example / (0.4 * 989e12)}
    cuda = torch.cuda.is_available()
    # dry run: the same structure at tiny dimensions, one update on the CPU, in this process
    cpu_cfg = load_config("tiny-cpu", ["learner.num_gpus_per_rank=0", "learner.num_ranks=1"])
    dry = learner_update(cpu_cfg, tiny_path, make_groups(tiny_path, 1, 2, seed=0), warm_up=False)
    figures["cpu_dry_run"] = dry
    parts = [f"7B config: {counts['total'] / 1e9:.2f}B parameters "
             f"({figures['parameters_vs_published']:.4f} of the published count)",
             f"CPU dry run (tiny model): {dry['learner_tokens_per_s']:.0f} tok/s, "
             f"{dry['model_flops_per_s'] / 1e9:.1f} GFLOP/s"]
    if not cuda:
        figures["skipped"] = {stage: "no CUDA device" for stage in STAGES}
        parts.append("GPU stages skipped: no CUDA device")
        return Result(figures, "; ".join(parts), ["The GPU stages ran nowhere: no CUDA device here."])
    groups = make_groups(tiny_path, args.learner_groups, 8, seed=0)
    figures["gpu"] = gpu = _gpu_stages(args, cfg, tiny_path, groups)
    parts += [f"{key}: {value}" for key, value in gpu["headline"].items()]
    return Result(figures, "; ".join(parts))


def _gpu_stages(args: argparse.Namespace, cfg: Config, tiny_path: str, groups: list) -> dict:
    """The stages that need CUDA; each one's figures and seconds."""
    import torch

    name = torch.cuda.get_device_name(0)
    peak = peak_flops(name)
    out: dict = {"device": name, "peak_bf16_flops": peak, "stages_s": {}, "headline": {}}
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="zoomrl-gpu-"))
    gpu = {"model": {"dtype": "bfloat16"},
           "rollout": {"num_workers": 1, "num_gpus_per_worker": 1,
                       "engine": {"gpu_memory_utilization": 0.85}},
           "learner": {"num_ranks": 1, "num_gpus_per_rank": 1, "mixed_precision": True,
                       "activation_checkpointing": True}}
    cfg = OmegaConf.merge(cfg, gpu)
    try:
        start = time.perf_counter()
        full = _write_random_model(qwen25_vl_7b_config(tiny_path), tiny_path, workdir / "full")
        part = _write_random_model(qwen25_vl_7b_config(tiny_path, args.learner_layers), tiny_path,
                                   workdir / f"layers-{args.learner_layers}")
        out["stages_s"]["build"] = time.perf_counter() - start
        if "rollout" not in args.skip:
            out["rollout"] = _timed(out, "rollout", _rollout, cfg, full, args.prompts)
            out["headline"]["rollout tok/s"] = round(out["rollout"]["tokens_per_s"])
        if "learner" not in args.skip:
            torch.cuda.empty_cache()
            learner = _timed(out, "learner", learner_update, cfg, str(part), groups, True)
            learner["mfu"] = None if peak is None else learner["model_flops_per_s"] / peak
            learner["decoder_layers"] = args.learner_layers
            out["learner"] = learner
            out["headline"]["learner tok/s"] = round(learner["learner_tokens_per_s"])
            out["headline"]["MFU"] = None if peak is None else round(learner["mfu"], 3)
            out["headline"]["learner peak GiB"] = round(learner["peak_memory_bytes"] / 2**30, 1)
        if "weight_sync" not in args.skip:
            shared = OmegaConf.merge(cfg, {"model": {"path": str(full)},
                                           "learner": {"num_gpus_per_rank": 0.5},
                                           "rollout": {"num_gpus_per_worker": 0.5,
                                                       "engine": {"gpu_memory_utilization": 0.4}}})
            out["weight_sync"] = sync = _timed(out, "weight_sync", _weight_sync, shared)
            out["headline"]["weight sync s"] = round(sync["sync_s"]["median"], 2)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    out["total_s"] = sum(out["stages_s"].values())
    return out


def _timed(out: dict, stage: str, fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    out["stages_s"][stage] = time.perf_counter() - start
    return result


def _write_random_model(config, tiny_path: str, folder: Path) -> Path:
    """A Hugging Face folder: random bf16 weights made on the GPU, the tiny model's tokenizer,
    processor and chat template."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="5GB")
    del model
    torch.cuda.empty_cache()
    for item in Path(tiny_path).iterdir():  # tokenizer, processor, chat template, generation config
        if item.is_file() and item.name != "config.json" and not item.name.startswith("model"):
            shutil.copy(item, folder / item.name)
    return folder


def _rollout(cfg: Config, model_path: Path, prompts: int) -> dict:
    from bench.cases.rollout import generate, scripted
    from core.data import read_samples
    from zoomrl.cluster import start_ray
    from zoomrl.run_setup import prepare_inputs

    cfg = scripted(OmegaConf.merge(cfg, {"model": {"path": str(model_path)}}))
    inputs = prepare_inputs(cfg)
    samples = read_samples(inputs.train_files, cfg.data.max_decoded_pixels)[:prompts]
    with _ray(cfg, start_ray):
        return generate(cfg, str(model_path), samples, workers=1)


def _weight_sync(cfg: Config) -> dict:
    from bench.cases.weight_sync import measure_size, memcpy_bandwidth
    from zoomrl.cluster import start_ray

    with _ray(cfg, start_ray):
        return measure_size(cfg, repeats=1, bandwidth=memcpy_bandwidth(256))


@contextlib.contextmanager
def _ray(cfg: Config, start_ray):
    """A local Ray cluster for one stage, shut down after it (frees the GPU for the next)."""
    import ray

    start_ray(cfg)
    try:
        yield
    finally:
        ray.shutdown()
