"""The benchmark entry point: the cheap case end to end, and the heavy cases' arguments and configs.

The heavy cases (engines, learner ranks, TRL) take minutes and never run here; what they build
before starting anything is checked instead.
"""

from __future__ import annotations

import json

import jinja2
import pytest

from bench.__main__ import CASES, build_parser, main
from bench.cases import async_vs_sync, gpu, rollout, vs_trl, weight_sync
from bench.common import spread
from bench.driver_run import ScheduleRun, run_config
from core.config import load_config
from core.spans import Span


def test_tools_case_writes_a_sane_record(tmp_path):
    out = tmp_path / "tools.json"
    assert main(["tools", "--sizes", "512", "--repeats", "1", "--no-ray", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["case"] == "tools" and record["summary"].startswith("zoom call in-process")
    [size] = record["figures"]["sizes"]
    assert size["image_side"] == 512 and size["png_bytes"] > 0
    for key in ("decode_s", "crop_resize_s", "call_in_process_s"):
        assert 0 < size[key] < 5, key
    assert size["crop_shape_model"][0] % 28 == 0  # smart-resized for the model
    assert {"torch", "ray", "transformers", "python"} <= set(record["versions"])
    machine = record["machine"]
    assert machine["cpu_count"] >= 1 and machine["ram_bytes"] > 0 and len(machine["load_average"]) == 3
    assert record["config"]["model"]["path"] == "tiny" and record["wall_seconds"] > 0
    assert record["command"].startswith("python -m bench tools")


def test_every_case_parses_its_flags_and_overrides():
    parser = build_parser()
    for case in CASES:
        args = parser.parse_args([case, "rollout.n=2", "learner.prompts_per_step=1"])
        cfg = load_config(args.config, args.overrides)
        assert cfg.rollout.n == 2 and cfg.learner.prompts_per_step == 1
    args = parser.parse_args(["async_vs_sync", "--pairs", "3", "--steps", "2"])
    assert (args.pairs, args.steps, args.staleness) == (3, 2, 1)
    assert parser.parse_args(["rollout", "--workers", "1", "2", "4"]).workers == [1, 2, 4]
    assert parser.parse_args(["learner", "--ranks", "2"]).ranks == [2]


def test_a_bad_override_stops_before_anything_runs(capsys):
    assert main(["learner", "learner.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_heavy_case_configs():
    cfg = load_config("tiny-cpu")
    run = run_config(cfg, staleness=1, steps=3, runs_dir="/tmp/x")
    assert run.queue.max_staleness == 1 and run.run.total_steps == 5 and run.metrics.port == 0
    assert run.queue.capacity_groups >= 2 * cfg.learner.prompts_per_step
    single = vs_trl.single_turn(cfg, 32)
    assert single.tools.enabled == [] and single.rollout.max_tool_calls == 0
    assert single.rollout.max_tokens_per_turn == single.rollout.max_response_tokens == 32
    forced = rollout.scripted(cfg)
    assert forced.rollout.sampling_extra_args["forced_turns"][0].endswith("</tool_call>")
    wide = weight_sync.wide_config(cfg, weight_sync.WIDE_TINY)
    assert wide.model.tiny.hidden_size == 1024 and wide.rollout.n == cfg.rollout.n


def test_trl_gets_the_prompt_zoomrl_renders():
    """TRL renders its messages with the model's chat template: the text must equal zoomrl's."""
    from actors.prompt import IMAGE, render_prompt
    from core.synth import make_sample
    from core.tiny import CHAT_TEMPLATE

    sample = make_sample(0, 512, seed=0, split="test")
    rendered = render_prompt(sample, [])
    messages = vs_trl.trl_messages(rendered)
    assert [m["role"] for m in messages] == ["system", "user"] and IMAGE not in messages[1]["content"]
    # what TRL's prepare_multimodal_messages makes of them: the image first in the user turn
    messages[1]["content"] = [{"type": "image"}, {"type": "text", "text": messages[1]["content"]}]
    text = jinja2.Template(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)
    assert text == rendered


def test_pipeline_view_of_steps():
    """Steps end at 10, 13, 16, 20 (warm-up, two measured, final); the actor generates 3 s of the
    first measured step, twice 1 s (overlapping) of the second; the rank trains 2 s in each."""
    run = ScheduleRun(0, startup_s=1.0, ends=[10.0, 13.0, 16.0, 20.0], lanes={
        "driver": [],
        "rollout 0": [Span("generate", 10.0, 13.0), Span("generate", 13.5, 14.5), Span("tool", 14.0, 15.0)],
        "learner rank 0": [Span("forward_backward", 11.0, 13.0), Span("optimizer", 14.0, 16.0)]},
        cpu=[{"rollout": r, "learner": r, "all": 2 * r} for r in (0.0, 3.0, 7.0, 9.0)])
    assert run.periods() == [3.0, 3.0]  # the final step left out
    steps = async_vs_sync.pipeline(run)
    assert steps[0]["rollout_busy_s"] == pytest.approx(3.0)
    assert steps[0]["learner_busy_s"] == pytest.approx(2.0)
    assert steps[0]["overlap_efficiency"] == pytest.approx(1.0)
    assert steps[1]["rollout_busy_s"] == pytest.approx(1.5)  # overlapping spans count once
    assert steps[1]["rollout_idle_s"] == pytest.approx(1.5)
    assert steps[1]["learner_idle_s"] == pytest.approx(1.0)
    assert [s["cpu_s"]["all"] for s in steps] == [6.0, 8.0]
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}


def test_the_async_ceiling_is_what_the_sync_schedule_leaves_idle():
    def step(period: float, rollout: float, learner: float) -> dict:
        return {"period_s": period, "rollout_busy_s": rollout, "learner_busy_s": learner,
                "cpu_s": {"all": 4.0}}

    # 1 s of rollout on 1 core, then 1 s of learner on 2 cores: 3 core-seconds in a 2 s period;
    # on 2 cores no schedule does it in under 1.5 s
    cores = {"rollout": 1.0, "learner": 2.0}
    bound = async_vs_sync.ceiling({"steps": [step(2.0, 1.0, 1.0)] * 3}, 2, cores)
    assert bound["busy_core_seconds"] == pytest.approx(3.0) and bound["bound_by"] == "cores"
    assert bound["best_period_s"] == pytest.approx(1.5) and bound["speedup"] == pytest.approx(2.0 / 1.5)
    assert bound["speedup_from_cpu_s"] == pytest.approx(1.0)  # 4 CPU seconds in 2 s: both cores full
    # with cores to spare the longer side bounds it
    bound = async_vs_sync.ceiling({"steps": [step(2.0, 1.2, 0.8)]}, 4, cores)
    assert bound["best_period_s"] == pytest.approx(1.2) and bound["bound_by"] == "the longest side"


def test_gpu_case_runs_its_cpu_parts(tmp_path):
    """Without CUDA the one-GPU check builds the 7B config (exactly the published parameter count),
    runs the FLOPs arithmetic, trains the tiny model once on the CPU, and says what it skipped."""
    import torch

    out = tmp_path / "gpu.json"
    assert main(["gpu", "--out", str(out)]) == 0
    figures = json.loads(out.read_text())["figures"]
    counts = figures["parameters"]
    assert counts["total"] == gpu.PUBLISHED_PARAMETERS and counts["lm_head"] == 3584 * 152064
    # 6 x (decoder + lm_head) per token is the floor; attention and the vision tower add to it
    tokens = 16 * 2000
    assert 6 * (counts["decoder"] + counts["lm_head"]) * tokens < figures["example_flops"]["model_flops"]
    assert figures["example_flops"]["model_flops"] < 1.5 * 6 * counts["total"] * tokens
    dry = figures["cpu_dry_run"]
    assert dry["learner_tokens_per_s"] > 0 and dry["model_flops_per_s"] > 0 and dry["peak_memory_bytes"] > 0
    if not torch.cuda.is_available():
        assert figures["skipped"] == dict.fromkeys(gpu.STAGES, "no CUDA device")
    assert gpu.peak_flops("NVIDIA H200") == 989e12 and gpu.peak_flops("Some GPU") is None


def test_deepeyes_mini_figure_has_one_curve_per_mode_from_the_base(tmp_path):
    """The ablation's figure: the three gating modes of the config, each curve starting at the
    base's figures (step 0) and a panel per val/ figure (an absent grounding IoU left out)."""
    from PIL import Image

    from bench.cases import deepeyes_mini

    assert deepeyes_mini.MODES == ("conditional", "unconditional", "none")
    assert build_parser().parse_args(["deepeyes_mini"]).config == "deepeyes-mini"  # its own preset
    base = {"curve": {"accuracy": 0.25, "tool_calls_per_trajectory": 1.0, "response_tokens": 60.0,
                      "grounding_iou": None}}
    runs = [{"mode": mode, "curve": [{"step": step, "accuracy": 0.25 + 0.01 * step,
                                      "tool_calls_per_trajectory": 1.0, "response_tokens": 50.0,
                                      "grounding_iou": 0.1} for step in (10, 20)]}
            for mode in deepeyes_mini.MODES]
    out = tmp_path / "curves.png"
    deepeyes_mini.draw(out, base, runs)
    assert Image.open(out).size == (1760, 374)  # 4 panels of 4 x 3.4 inches at 110 dpi


def test_pointing_case_refuses_flags_of_another_source():
    with pytest.raises(ValueError, match="needs --vision tower"):
        main(["pointing", "--vision", "all-codes", "--dense", "--steps", "1"])
    with pytest.raises(ValueError, match="needs --vision object-codes"):
        main(["pointing", "--vision", "tower", "--spread", "2", "--steps", "1"])
