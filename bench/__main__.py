"""`python -m bench CASE [--config PRESET_OR_YAML] [--out FILE] [flags] [key=value ...]`

Cases (one module each under bench/cases/; `python -m bench CASE --help` lists a case's flags):
async_vs_sync, anatomy, vs_trl, rollout, learner, weight_sync, tools, gpu, deepeyes_mini, pointing. Each
one JSON record (default bench/results/CASE.json) and prints a one-line summary. See bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from bench.common import RESULTS_DIR, write_result
from core.config import DEFAULT_PRESET, ConfigError, load_config, preset_names

CASES = ("async_vs_sync", "anatomy", "vs_trl", "rollout", "learner", "weight_sync", "tools", "gpu",
         "deepeyes_mini", "pointing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    cases = parser.add_subparsers(dest="case", required=True)
    for name in CASES:
        module = importlib.import_module(f"bench.cases.{name}")
        sub = cases.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        preset = getattr(module, "PRESET", DEFAULT_PRESET)  # a case may run on its own preset
        sub.add_argument("--config", default=preset,
                         help=f"a preset ({', '.join(preset_names())}) or a YAML file (default: {preset})")
        sub.add_argument("--out", type=Path, default=None,
                         help=f"JSON file to write (default: {RESULTS_DIR}/{name}.json)")
        module.add_arguments(sub)
        sub.add_argument("overrides", nargs="*", metavar="key=value",
                         help="dotted config overrides, e.g. rollout.n=8")
        sub.set_defaults(case_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    module = args.case_module
    started, load_before = time.perf_counter(), list(os.getloadavg())
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 2
    result = module.run(args, cfg)
    write_result(args.case, result, cfg, args, argv, started, load_before,
                 args.out or RESULTS_DIR / f"{args.case}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
