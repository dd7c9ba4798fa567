"""deepeyes_mini: the DeepEyes tool-reward ablation in miniature: does GRPO teach the tiny base to
think with images, and how does the tool bonus's gating change that?

On one config (the deepeyes-mini preset by default: the pretrained tiny base, zoomrl/tiny_base.py,
on the synthetic `checks` set, whose answers a full view cannot show and a zoom on the right
object does), the case runs:
1. two baselines of the base on the held-out test split, through `zoomrl eval`'s code
   (`zoomrl.evaluate.run_eval`): with the zoom tool (step 0 of every curve) and without tools
   (`tools.enabled=[]`);
2. one GRPO run per gating mode of the tool bonus (`reward.gating`: conditional, unconditional,
   none), with the same seeds, --steps updates each, validating every --eval-every steps on the
   same held-out questions (`run.eval_every`, zoomrl/validate.py: the sampling and scoring of
   `zoomrl eval`).
The JSON record has, per mode, the curves (held-out accuracy, zoom calls per trajectory, response
tokens, grounding IoU against the ground-truth boxes) and the final accuracy with its Wilson
interval beside the baselines', the seeds, steps and wall times; a PNG of the curves is written
next to it (the paper's training-dynamics panels). Goal: conditional's final held-out accuracy at
least 20 points (absolute) above the base's and above the no-tool baseline's. The ordering of the
modes is reported as it comes out (the paper, on V*: conditional 90.1, the others 87.4).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import typing
from pathlib import Path

from omegaconf import OmegaConf

from bench.common import RESULTS_DIR, Result
from core.config import Config, RewardConfig
from zoomrl.cluster import start_ray
from zoomrl.evaluate import wilson_interval

NAME = "deepeyes_mini"
PRESET = "deepeyes-mini"
GOAL_POINTS = 0.20
MODES = typing.get_args(typing.get_type_hints(RewardConfig)["gating"])
CURVES = {"accuracy": "held-out accuracy", "tool_calls_per_trajectory": "zoom calls / trajectory",
          "response_tokens": "response tokens", "grounding_iou": "grounding IoU"}
"""The val/ figures drawn, and their axis labels."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=40, help="GRPO updates per mode (default 40)")
    parser.add_argument("--eval-every", type=int, default=10, help="validate every this many steps")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="reward.gating modes to train (default: all three)")


def interval(correct: int, n: int) -> dict:
    low, high = wilson_interval(correct, n)
    return {"accuracy": correct / n if n else 0.0, "correct": correct, "n": n, "ci_low": low, "ci_high": high}


def baseline(cfg: Config, model_path: str, test_files: list[str], out: Path) -> dict:
    """The base on the held-out split as `zoomrl eval` scores it: interval and curve figures."""
    from zoomrl.evaluate import run_eval

    report = run_eval(cfg, model_path, test_files, out)
    overall = report.overall
    return {**interval(overall.correct, overall.trajectories),
            "curve": {"accuracy": overall.accuracy,
                      "tool_calls_per_trajectory": overall.tool_calls_per_trajectory,
                      "response_tokens": report.response_tokens / max(overall.trajectories, 1),
                      "grounding_iou": overall.grounding_iou}}


def train_mode(cfg: Config, mode: str, steps: int, eval_every: int, runs_dir: str) -> dict:
    """One GRPO run with reward.gating=mode; its validations as curves, the last as the final."""
    from zoomrl.driver import Driver
    from zoomrl.run_setup import new_run_dir

    cfg = OmegaConf.merge(cfg, {
        "reward": {"gating": mode}, "metrics": {"port": 0},
        "run": {"total_steps": steps, "eval_every": eval_every, "checkpoint_every": 0, "runs_dir": runs_dir,
                "name": f"deepeyes-mini-{mode}"}})
    started = time.perf_counter()
    driver = Driver(cfg, new_run_dir(cfg))
    try:
        driver.run()
        records = [json.loads(line) for line in (driver.run_dir / "metrics.jsonl").read_text().splitlines()]
    finally:
        driver.close()
    validations = [record for record in records if "val/accuracy" in record]
    last = validations[-1]
    return {"mode": mode, "wall_s": time.perf_counter() - started,
            "final": interval(round(last["val/accuracy"] * last["val/n"]), int(last["val/n"])),
            "curve": [{"step": r["step"], **{k: r.get(f"val/{k}") for k in CURVES}} for r in validations],
            "train_reward": [r["reward_mean"] for r in records]}


def draw(path: Path, base: dict, runs: list[dict]) -> None:
    """The curves per mode, step 0 being the base (with tools)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.4))
    for ax, (key, label) in zip(axes, CURVES.items(), strict=True):
        for run in runs:
            points = [(0, base["curve"][key])] + [(p["step"], p[key]) for p in run["curve"]]
            points = [(step, value) for step, value in points if value is not None]
            ax.plot(*zip(*points, strict=True), marker="o", label=run["mode"])
        ax.set_xlabel("GRPO step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace, cfg: Config) -> Result:
    from zoomrl.run_setup import prepare_inputs

    start_ray(cfg)
    inputs = prepare_inputs(cfg)
    out = Path(args.out or RESULTS_DIR / f"{NAME}.json")
    scratch = Path(tempfile.mkdtemp(prefix="zoomrl-deepeyes-mini-"))
    started = time.perf_counter()
    base = baseline(cfg, inputs.model_path, inputs.test_files, scratch / "base.json")
    no_tools = baseline(OmegaConf.merge(cfg, {"tools": {"enabled": []}}), inputs.model_path,
                        inputs.test_files, scratch / "no-tools.json")
    print(f"  base {100 * base['accuracy']:.1f}%, no tools {100 * no_tools['accuracy']:.1f}%", flush=True)
    runs = []
    for mode in args.modes:
        runs.append(train_mode(cfg, mode, args.steps, args.eval_every, str(scratch / "runs")))
        print(f"  {mode}: {100 * runs[-1]['final']['accuracy']:.1f}% after {args.steps} steps "
              f"({runs[-1]['wall_s']:.0f}s)", flush=True)
    figure = out.with_suffix(".png")
    draw(figure, base, runs)
    by_mode = {r["mode"]: r for r in runs}
    table = [("base (no RL)", base), ("no tools", no_tools)]
    table += [(f"GRPO {mode}", by_mode[mode]["final"]) for mode in args.modes]
    lines = [f"{name}: {100 * row['accuracy']:.1f}% [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"
             for name, row in table]
    goal = ""
    if "conditional" in by_mode:
        gain = by_mode["conditional"]["final"]["accuracy"] - max(base["accuracy"], no_tools["accuracy"])
        goal = (f"; conditional {100 * gain:+.1f} points over the better baseline "
                f"(goal >= +{100 * GOAL_POINTS:.0f}: {'met' if gain >= GOAL_POINTS else 'MISSED'})")
    order = " > ".join(sorted(by_mode, key=lambda m: -by_mode[m]["final"]["accuracy"]))
    figures = {"base": base, "no_tools": no_tools, "modes": runs, "order": order, "steps": args.steps,
               "eval_every": args.eval_every, "seeds": {"rollout": cfg.rollout.seed, "data": cfg.data.seed,
                                                        "synth": cfg.data.synth.seed},
               "wall_s": time.perf_counter() - started, "figure": str(figure)}
    return Result(figures, "; ".join(lines) + goal + f"; order {order} [{figure}]")
