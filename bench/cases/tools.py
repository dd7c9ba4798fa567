"""tools: latency of one zoom-in call (decode + crop + resize) on 2K, 4K and 8K images, in-process
and as the Ray task the rollout actors use.

Images are the synthetic visual-search rows (`core.synth.make_sample`, PNG) at each side; the
box is a quarter of the view the model saw, the typical zoom. Per size: decode of the original
(a call given encoded bytes decodes it every time), crop + smart-resize of the decoded original,
the whole `execute_tool` call, and `execute_tool_task` end to end with the original in the object
store: as encoded bytes (decoded by every call) and as the decoded pixels a rollout actor puts
there once per group. Ray's own cost per call = task time - in-process time; a no-op task's round
trip is the floor.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import Result, best_of
from core.config import Config
from core.synth import make_sample
from tools import ToolCall, execute_tool, initial_view
from tools.view import snap_region
from zoomrl.cluster import start_ray

NAME = "tools"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192],
                        help="image sides in pixels (default 2048 4096 8192)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per figure (best is kept)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray task figures")


def _quarter_box(width: int, height: int) -> list[float]:
    """A box half the view's width and height, centred: a quarter of what the model saw."""
    return [width / 4, height / 4, 3 * width / 4, 3 * height / 4]


def measure_size(size: int, cfg: Config, repeats: int, use_ray: bool) -> dict[str, float]:
    made = time.perf_counter()
    data = make_sample(0, size, seed=0, split="bench").images[0]
    made = time.perf_counter() - made
    max_pixels = max(cfg.data.max_decoded_pixels, size * size)
    view = initial_view(data, cfg.model, max_pixels)
    call = ToolCall("image_zoom_in_tool", {"bbox_2d": _quarter_box(view.width, view.height)})
    region = snap_region(view.to_frame(call.arguments["bbox_2d"]), view.frame_size)
    original = view.load_original()
    decoded_view = initial_view(np.asarray(original), cfg.model, max_pixels)
    outcome = execute_tool(call, [view], cfg.tools, cfg.model)
    assert outcome.view is not None, outcome.error  # the benchmark must time a successful zoom
    figures = {
        "image_side": size, "png_bytes": len(data), "make_image_s": made,
        "crop_pixels_original": (region[2] - region[0]) * (region[3] - region[1]),
        "crop_shape_model": list(outcome.view.pixels.shape[:2]),
        "decode_s": best_of(repeats, view.load_original),
        "crop_resize_s": best_of(repeats, lambda: decoded_view.derive(0.0, region, cfg.model)),
        "call_in_process_s": best_of(repeats, lambda: execute_tool(call, [view], cfg.tools, cfg.model)),
    }
    if use_ray:
        import ray

        from tools import execute_tool_task

        def task(source) -> float:
            remote_view = initial_view(ray.put(source), cfg.model, max_pixels)
            return best_of(repeats, lambda: ray.get(execute_tool_task.remote(call, [remote_view], cfg.tools,
                                                                             cfg.model)))

        figures["call_ray_task_s"] = task(data)
        figures["ray_overhead_s"] = figures["call_ray_task_s"] - figures["call_in_process_s"]
        figures["call_ray_task_decoded_s"] = task(np.asarray(original))
        figures["decoded_speedup"] = figures["call_ray_task_s"] / figures["call_ray_task_decoded_s"]
    return figures


def run(args: argparse.Namespace, cfg: Config) -> Result:
    floor = None
    if not args.no_ray:
        import ray

        start_ray(cfg)

        @ray.remote
        def noop() -> None:
            return None

        floor = best_of(args.repeats, lambda: ray.get(noop.remote()))
    per_size = [measure_size(size, cfg, args.repeats, not args.no_ray) for size in args.sizes]
    figures = {"sizes": per_size, "noop_ray_task_s": floor, "repeats": args.repeats,
               "model_max_pixels": cfg.model.max_pixels}
    key = "call_in_process_s" if args.no_ray else "call_ray_task_s"
    summary = ", ".join(f"{f['image_side']}px {1000 * f[key]:.0f} ms "
                        f"(decode {100 * f['decode_s'] / f['call_in_process_s']:.0f}%)" for f in per_size)
    summary = f"zoom call {'in-process' if args.no_ray else 'as Ray task'}: {summary}"
    if not args.no_ray:
        summary += "; from decoded pixels: " + ", ".join(
            f"{f['image_side']}px {1000 * f['call_ray_task_decoded_s']:.0f} ms ({f['decoded_speedup']:.1f}x)"
            for f in per_size)
    if floor is not None:
        summary += f"; no-op Ray task {1000 * floor:.1f} ms"
    return Result(figures, summary)
