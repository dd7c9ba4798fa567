"""vs_trl: wall time per GRPO step of one single-turn job under TRL's GRPOTrainer (CPU) and under
zoomrl (goal: zoomrl >= 3x faster).

The job, identical on both sides: the same policy folder (tiny-cpu: the tiny Qwen2.5-VL of
core/tiny.py), the same first prompts of the training set with their images (TRL gets the
conversation zoomrl renders, so the prompt tokens and the 448x448 image's 256 image tokens are the
same), learner.prompts_per_step prompts x rollout.n samples per step, --max-new-tokens per
completion, temperature 1, KL 0 (no reference model), AdamW at learner.lr, one optimizer step
per batch. Single-turn on the zoomrl side: no tools offered, rollout.max_tool_calls=0, one turn of
at most --max-new-tokens. Reward: TRL gets answer-letter accuracy (zoomrl's extraction); zoomrl
scores with its own reward task (both are negligible next to generation and training).

TRL runs in a child process (TRL and accelerate are never imported by zoomrl), on every CPU
core, generating with transformers' generate; zoomrl runs its Driver (vLLM rollout actor, FSDP2
learner ranks, as configured) both synchronously (max_staleness 0, TRL's schedule) and
asynchronously (max_staleness 1, the default). Each side: 1 warm-up step, --steps measured.
Install TRL with `pip install -e ".[bench]"`, or give --trl-path, a folder of TRL and its
dependencies (`pip install --target DIR`) added to the child's PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from omegaconf import OmegaConf

from bench.common import Result, spread
from core.config import Config
from zoomrl.cluster import start_ray

NAME = "vs_trl"
GOAL_SPEEDUP = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=3, help="measured steps per side (default 3)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per completion (default 64)")
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
    trainer = GRPOTrainer(model=model, reward_funcs=accuracy, args=config,
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
            "completion_mean_length": lengths}


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


def run(args: argparse.Namespace, cfg: Config) -> Result:
    from bench.cases.async_vs_sync import one_run
    from zoomrl.run_setup import prepare_inputs

    cfg = single_turn(cfg, args.max_new_tokens)
    inputs = prepare_inputs(cfg)
    prompts = cfg.learner.prompts_per_step * (args.steps + 1)
    spec = {"train_files": inputs.train_files, "model_path": inputs.model_path, "prompts": prompts,
            "prompts_per_step": cfg.learner.prompts_per_step, "n": cfg.rollout.n, "steps": args.steps,
            "max_new_tokens": args.max_new_tokens, "lr": cfg.learner.lr, "seed": cfg.run.seed}
    trl = run_trl(spec, args.trl_path)
    figures: dict = {"job": spec, "trl": trl | {"step_s_spread": spread(trl["step_s"])}}
    parts = [f"TRL {figures['trl']['step_s_spread']['median']:.1f} s/step"]
    if not args.skip_zoomrl:
        # the same prompts in the same order: no shuffling, as TRL is told
        zoom_cfg = OmegaConf.merge(cfg, {"data": {"shuffle": False}})
        start_ray(zoom_cfg)
        for mode, staleness in (("sync", 0), ("async", 1)):
            measured = one_run(zoom_cfg, staleness, args.steps)
            step_s = [s["period_s"] for s in measured["steps"]]
            figures[f"zoomrl_{mode}"] = measured | {"step_s": spread(step_s)}
            ratio = figures["trl"]["step_s_spread"]["median"] / spread(step_s)["median"]
            figures[f"speedup_{mode}"] = ratio
            met = "met" if ratio >= GOAL_SPEEDUP else "MISSED"
            parts.append(f"zoomrl {mode} {spread(step_s)['median']:.1f} s/step ({ratio:.2f}x, goal >= "
                         f"{GOAL_SPEEDUP}: {met})")
    notes = [f"TRL {trl['trl_version']} GRPOTrainer, use_vllm=False, CPU, {trl['torch_threads']} torch "
             "threads; zoomrl with its configured actors and ranks on the same cores."]
    return Result(figures, "; ".join(parts), notes)
