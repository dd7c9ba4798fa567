"""vs_trl: wall time per GRPO step of the same single-turn job under TRL's GRPOTrainer (CPU) and
under zoomrl, at two sizes, interleaved, with each side's peak memory.

Sizes (SIZES): "tiny", today's tiny-cpu job (the 0.6M-parameter tiny Qwen2.5-VL, 2 prompts x 4
samples, <= 64 new tokens; goals: zoomrl synchronous >= 1.5x, asynchronous >= 2x TRL), and "wide",
the issue's generation-heavy job (the tiny model widened to 512 x 6 layers, 23.4M parameters, 1
prompt x 16 samples, <= 256 new tokens; goal >= 3x TRL; on this CPU its training still takes about
two thirds of TRL's step, bench/README.md). The job, identical on both sides: the same policy
folder, the same first prompts of the training set with their images (TRL gets the conversation
zoomrl renders, so the prompt tokens and the 448x448 image's 256 image tokens are the same),
temperature 1, KL 0 (no reference model), AdamW at learner.lr, one optimizer step per batch.
Single-turn on the zoomrl side: no tools offered, rollout.max_tool_calls=0, one turn of at most
the size's new tokens. Reward: TRL gets answer-letter accuracy (zoomrl's extraction); zoomrl
scores with its own reward task (both negligible next to generation and training).

TRL runs in a child process (TRL and accelerate are never imported by zoomrl), on every CPU
core, generating with transformers' generate; its generation time per step (GRPOTrainer's
`_generate_and_score_completions`) is timed apart. zoomrl runs its Driver (vLLM rollout actor,
FSDP2 learner ranks, as configured; bench/driver_run.py) synchronously (max_staleness 0, TRL's
schedule) and asynchronously (max_staleness 1, the default). Each side: 1 warm-up step, --steps
measured. A round runs, per size, TRL, zoomrl sync, zoomrl async; --rounds rounds interleave, so
every ratio is taken within a round and its spread is over rounds.

Memory (bench/processes.py, read at the end of a run, nothing sampled during it): TRL's process's
peak RSS; for zoomrl, over this process and everything under it (the driver, Ray's own processes,
the actor and its engine core, the ranks, task workers), the sum of each process's peak RSS (an
upper bound: shared pages count once per process) and the sum of their PSS after the last step.

Install TRL with `pip install -e ".[bench]"`, or give --trl-path, a folder of TRL and its
dependencies (`pip install --target DIR`) added to the child's PYTHONPATH. key=value overrides
tune zoomrl's side of both sizes (e.g. learner.num_ranks=1); a size's own keys define the job and
win.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from omegaconf import OmegaConf

from bench.common import Result, spread
from bench.processes import tree_memory
from core.config import Config
from zoomrl.cluster import start_ray

NAME = "vs_trl"
SCHEDULES = {"sync": 0, "async": 1}
"""zoomrl's schedules: name -> queue.max_staleness."""


@dataclass(frozen=True)
class Size:
    """One job both sides run."""

    overrides: dict
    """Config keys that define the job (the model, the batch)."""
    max_new_tokens: int
    goals: dict[str, float]
    """Schedule -> the speed-up over TRL it should reach ('best': whichever schedule is faster)."""


SIZES = {
    "tiny": Size({}, 64, {"sync": 1.5, "async": 2.0}),
    "wide": Size({"model": {"tiny": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 6,
                                     "num_attention_heads": 8, "num_key_value_heads": 2}},
                  "rollout": {"n": 16}, "learner": {"prompts_per_step": 1}}, 256, {"best": 3.0}),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES),
                        help="jobs to compare (default: all)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per side and round (default 3)")
    parser.add_argument("--trl-path", default="", help="folder added to the TRL child's PYTHONPATH")
    parser.add_argument("--skip-zoomrl", action="store_true", help="run only the TRL side")


def single_turn(cfg: Config, max_new_tokens: int) -> Config:
    """The zoomrl config of the shared job: one turn, no tools."""
    return OmegaConf.merge(cfg, {
        "tools": {"enabled": []},
        "rollout": {"max_tool_calls": 0, "max_tokens_per_turn": max_new_tokens,
                    "max_response_tokens": max_new_tokens}})


def trl_messages(rendered: str) -> list[dict[str, str]]:
    """zoomrl's rendered prompt as chat messages for TRL, the image pad taken out of the user turn
    (TRL puts the image before the first user text, which renders to the same text)."""
    from actors.prompt import ASSISTANT_OPEN, IM_END, IM_START, IMAGE

    messages = []
    for turn in rendered.removesuffix(ASSISTANT_OPEN).split(IM_START)[1:]:
        role, content = turn.removesuffix(IM_END + "\n").split("\n", 1)
        messages.append({"role": role, "content": content.replace(IMAGE, "", 1)})
    return messages


def trl_job(spec: dict) -> dict:
    """The TRL side (runs in the child process): GRPOTrainer on the job, seconds per step."""
    import importlib

    # transformers first: zoomrl's start-up shim hides a torchcodec that cannot load when transformers
    # is imported, and datasets decides at its import whether torchcodec exists
    importlib.import_module("transformers")

    import io

    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from actors.prompt import render_prompt
    from core.data import read_samples
    from rewards.answer import extract_answer

    samples = read_samples(spec["train_files"])[: spec["prompts"]]
    rows = {"prompt": [trl_messages(render_prompt(s, [])) for s in samples],
            "image": [Image.open(io.BytesIO(s.images[0])).convert("RGB") for s in samples],
            "answer": [s.answer for s in samples]}

    def accuracy(completions, answer, **_) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(extract_answer([t]) == a) for t, a in zip(texts, answer, strict=True)]

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    class TimedGRPOTrainer(GRPOTrainer):
        """Times each step's generation and scoring (TRL's rollout) apart from its training."""

        generate_s: list[float] = []

        def _generate_and_score_completions(self, *args, **kwargs):
            started = time.perf_counter()
            out = super()._generate_and_score_completions(*args, **kwargs)
            self.generate_s.append(time.perf_counter() - started)
            return out

    clock = StepClock()
    batch = spec["prompts_per_step"] * spec["n"]
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="zoomrl-bench-trl-"), use_cpu=True, bf16=False,
        per_device_train_batch_size=batch, gradient_accumulation_steps=1, num_generations=spec["n"],
        max_completion_length=spec["max_new_tokens"], max_steps=spec["steps"] + 1,
        learning_rate=spec["lr"], beta=0.0, num_iterations=1, temperature=1.0, top_p=1.0,
        report_to=[], logging_steps=1, save_strategy="no", seed=spec["seed"], use_vllm=False,
        dataloader_num_workers=0, shuffle_dataset=False)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(spec["model_path"], dtype=torch.float32)
    trainer = TimedGRPOTrainer(model=model, reward_funcs=accuracy, args=config,
                          train_dataset=Dataset.from_dict(rows),
                          processing_class=AutoProcessor.from_pretrained(spec["model_path"]),
                          callbacks=[clock])
    started = time.perf_counter()
    trainer.train()
    periods = [b - a for a, b in zip(clock.ends, clock.ends[1:], strict=False)]
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history
               if "completions/mean_length" in h]
    import trl

    return {"trl_version": trl.__version__, "torch_threads": torch.get_num_threads(),
            "first_step_s": clock.ends[0] - started, "step_s": periods,
            "generate_s": trainer.generate_s[1:], "completion_mean_length": lengths[1:],
            "parameters": sum(p.numel() for p in model.parameters()), "memory": tree_memory(os.getpid())}


def run_trl(spec: dict, trl_path: str) -> dict:
    """trl_job in a child process; its JSON answer, or why it failed."""
    env = dict(os.environ)
    if trl_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (trl_path, env.get("PYTHONPATH", "")) if p)
    code = ("import json, sys; from bench.cases.vs_trl import trl_job; "
            "print('TRL-RESULT ' + json.dumps(trl_job(json.loads(sys.argv[1]))))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env, capture_output=True,
                          text=True)
    for line in done.stdout.splitlines():
        if line.startswith("TRL-RESULT "):
            return json.loads(line.removeprefix("TRL-RESULT "))
    raise RuntimeError(f"the TRL side failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


def job_config(cfg: Config, size: Size) -> Config:
    """zoomrl's config of a size's job: the size's keys over the user's, one turn, the prompts in order."""
    cfg = single_turn(OmegaConf.merge(cfg, size.overrides), size.max_new_tokens)
    return OmegaConf.merge(cfg, {"data": {"shuffle": False}})  # TRL is told not to shuffle either


def one_size(name: str, cfg: Config, args: argparse.Namespace) -> dict:
    """Every round of one size: TRL then each zoomrl schedule, and the ratios per round."""
    from bench.cases.async_vs_sync import summarize
    from bench.driver_run import run_schedule
    from zoomrl.run_setup import prepare_inputs

    size = SIZES[name]
    cfg = job_config(cfg, size)
    inputs = prepare_inputs(cfg)
    spec = {"train_files": inputs.train_files, "model_path": inputs.model_path,
            "prompts": cfg.learner.prompts_per_step * (args.steps + 1),
            "prompts_per_step": cfg.learner.prompts_per_step, "n": cfg.rollout.n, "steps": args.steps,
            "max_new_tokens": size.max_new_tokens, "lr": cfg.learner.lr, "seed": cfg.run.seed}
    rounds = []
    for _ in range(args.rounds):
        trl = run_trl(spec, args.trl_path)
        one = {"trl": trl, "trl_step_s": spread(trl["step_s"])}
        print(f"  {name}: TRL {one['trl_step_s']['median']:.2f} s/step", flush=True)
        if not args.skip_zoomrl:
            for schedule, staleness in SCHEDULES.items():
                one[schedule] = summarize(run_schedule(cfg, staleness, args.steps))
                one[f"speedup_{schedule}"] = one["trl_step_s"]["median"] / one[schedule]["period_s"]["median"]
                print(f"  {name}: zoomrl {schedule} {one[schedule]['period_s']['median']:.2f} s/step "
                      f"({one[f'speedup_{schedule}']:.2f}x)", flush=True)
        rounds.append(one)
    figures = {"job": spec | {"parameters": rounds[0]["trl"]["parameters"]}, "rounds": rounds,
               "trl_step_s": spread([s for r in rounds for s in r["trl"]["step_s"]]),
               "trl_generate_s": spread([s for r in rounds for s in r["trl"]["generate_s"]]),
               "trl_peak_rss_gib": max(r["trl"]["memory"]["peak_rss_sum_gib"] for r in rounds)}
    if args.skip_zoomrl:
        return figures
    for schedule in SCHEDULES:
        periods = [step["period_s"] for r in rounds for step in r[schedule]["steps"]]
        figures[f"zoomrl_{schedule}_step_s"] = spread(periods)
        figures[f"speedup_{schedule}"] = spread([r[f"speedup_{schedule}"] for r in rounds])
        figures[f"zoomrl_{schedule}_peak_rss_gib"] = max(r[schedule]["memory"]["peak_rss_sum_gib"]
                                                         for r in rounds)
        figures[f"zoomrl_{schedule}_pss_gib"] = max(r[schedule]["memory"]["pss_now_gib"] for r in rounds)
    figures["goals"] = {}
    for schedule, goal in size.goals.items():
        ratio = max(figures[f"speedup_{s}"]["median"] for s in SCHEDULES) if schedule == "best" \
            else figures[f"speedup_{schedule}"]["median"]
        figures["goals"][schedule] = {"goal": goal, "ratio": ratio, "met": ratio >= goal}
    return figures


def run(args: argparse.Namespace, cfg: Config) -> Result:
    if not args.skip_zoomrl:
        start_ray(cfg)
    figures, parts = {}, []
    for name in args.sizes:
        figures[name] = found = one_size(name, cfg, args)
        line = (f"{name}: TRL {found['trl_step_s']['median']:.2f} s/step, peak RSS "
                f"{found['trl_peak_rss_gib']:.1f} GiB")
        for schedule in () if args.skip_zoomrl else SCHEDULES:
            line += (f"; zoomrl {schedule} {found[f'zoomrl_{schedule}_step_s']['median']:.2f} s/step "
                     f"({found[f'speedup_{schedule}']['median']:.2f}x), "
                     f"peak RSS summed {found[f'zoomrl_{schedule}_peak_rss_gib']:.1f} GiB "
                     f"(PSS {found[f'zoomrl_{schedule}_pss_gib']:.1f})")
        for schedule, goal in found.get("goals", {}).items():
            line += f"; goal {schedule} >= {goal['goal']}x: {'met' if goal['met'] else 'MISSED'}"
        parts.append(line)
    trl = figures[args.sizes[0]]["rounds"][0]["trl"]
    notes = [f"TRL {trl['trl_version']} GRPOTrainer, use_vllm=False, CPU, {trl['torch_threads']} torch "
             f"threads; zoomrl: {cfg.rollout.num_workers} rollout actor(s), {cfg.learner.num_ranks} learner "
             f"rank(s) x {cfg.learner.num_cpus_per_rank} CPU, on the same cores",
             "ratios are per round (TRL's median step over zoomrl's, both measured in that round); "
             "memory: TRL's process's peak RSS; zoomrl's processes' peak RSS summed (shared pages "
             "counted once per process: an upper bound) and their PSS summed after the last step"]
    return Result(figures, " | ".join(parts), notes)
