"""The `zoomrl` command: train, scale, stop, rollout, eval, curate, data synth, config show|explain,
export, view.

Config-taking commands accept `--config PRESET_OR_YAML` and dotted `key=value` overrides.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path

from core.config import (
    DEFAULT_PRESET,
    ConfigError,
    PromptStyle,
    SynthConfig,
    field_problem,
    load_config,
    preset_names,
    to_yaml,
)
from core.data import DataError, read_samples


def _int_field(key: str) -> Callable[[str], int]:
    """An argparse type for an integer flag that stands for the config field `key`: the field's
    own domain, refused in argparse's one-line error naming the flag."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        problem = field_problem(key, value)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem} (as {key}), got {value}")
        return value
    return parse


def _output_folder(text: str) -> str:
    """An argparse type for a folder to write into: refused when a file stands in its way."""
    path = Path(text).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file, not a folder")
    return text


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_PRESET,
                        help=f"a preset ({', '.join(preset_names())}) or a YAML file "
                             f"(default: {DEFAULT_PRESET})")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. rollout.n=8 learner.lr=1e-6")


def _cmd_config_show(args: argparse.Namespace) -> int:
    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def _cmd_config_explain(args: argparse.Namespace) -> int:
    from core.config_explain import explain

    print(explain(args.prefix, load_config(args.config), args.config), end="")
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from core.synth import write_synthetic

    start = time.perf_counter()
    paths = write_synthetic(args.out, args.n_train, args.n_test, args.image_size, args.seed)
    for split, path in paths.items():
        print(f"{split}: {path}")
    print(f"wrote {args.n_train} train + {args.n_test} test rows in {time.perf_counter() - start:.1f}s")
    return 0


def _progress(total_steps: int):
    """One line per step: a bar, the reward, zooms per trajectory and throughput; and one for the
    validation of a step that validated."""
    def show(figures: dict) -> None:
        step = int(figures["policy_version"])
        bar = "#" * (20 * step // total_steps)
        print(f"step {step}/{total_steps} [{bar:<20}] reward {figures['reward_mean']:+.3f} "
              f"acc {figures['accuracy']:.2f} zooms/traj {figures['tool_calls_per_trajectory']:.2f} "
              f"rollout {figures['rollout_tokens_per_s']:.0f} tok/s "
              f"learner {figures.get('learner_tokens_per_s', 0):.0f} tok/s "
              f"({figures['step_seconds']:.1f}s)", flush=True)
        if "val/accuracy" in figures:  # a step that validated (run.eval_every)
            print(f"  validation: acc {figures['val/accuracy']:.2f} over {figures['val/n']} held-out "
                  f"trajectories, zooms/traj {figures['val/tool_calls_per_trajectory']:.2f} "
                  f"({figures['val/seconds']:.1f}s)", flush=True)
    return show


def _cmd_train(args: argparse.Namespace) -> int:
    from core.progress import StartupLog

    say = StartupLog()  # before the imports below: Ray, torch and vLLM take seconds to load
    from rewards import JudgeError
    from zoomrl.driver import Driver

    if args.resume:  # the run's saved config plus these overrides (saved once the resume starts)
        cfg = load_config(str(Path(args.resume) / "config.yaml"), args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    # A new run's directory is made by the driver, once its inputs are checked.
    driver = Driver(cfg, Path(args.resume) if args.resume else None, resume=bool(args.resume), say=say)
    try:
        print(f"run directory: {driver.run_dir}", flush=True)
        print(f"metrics: {driver.metrics.url}", flush=True)
        if "dashboard_url" in driver.ray_info:
            print(f"Ray dashboard: http://{driver.ray_info['dashboard_url']}", flush=True)
        print(f"training from step {driver.step} to {cfg.run.total_steps}", flush=True)
        summary = driver.run(on_step=_progress(cfg.run.total_steps))
    except JudgeError as err:  # the judge stayed down; the driver saved a checkpoint first
        print(f"zoomrl: error: {err}", file=sys.stderr)
        return 1
    finally:
        driver.close()
    ended = "stopped by zoomrl stop at" if summary["stopped"] else "done:"
    print(f"{ended} {summary['steps']} steps; metrics.jsonl, trajectories.jsonl and checkpoints in "
          f"{driver.run_dir}")
    return 0


def _join_cluster(address: str | None) -> None:
    """Connect to the Ray cluster a run is going on (for scale and stop)."""
    import ray

    from zoomrl.control import NAMESPACE

    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    if address.startswith(("http://", "https://")):
        raise LookupError(f"--address takes the cluster's GCS address (head:6379) or 'auto', not the "
                          f"dashboard's {address}; from outside the cluster, submit the command as a Ray "
                          "job: ray job submit -- zoomrl scale --rollout-workers N")
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, configure_logging=False)


def _cmd_scale(args: argparse.Namespace) -> int:
    import ray

    from zoomrl.control import find_control, wait_for_rollout_workers

    _join_cluster(args.address)
    try:
        control, run_name = find_control(args.run)
        ray.get(control.request_rollout_workers.remote(args.rollout_workers))
        print(f"run {run_name}: asked for {args.rollout_workers} rollout actors", flush=True)
        if args.no_wait:
            return 0
        shown = []

        def show(status) -> None:
            line = (f"active {status.active}, starting {status.starting}, retiring {status.retiring} "
                    f"(step {status.step})")
            if not shown or shown[-1] != line:
                print(line, flush=True)
                shown.append(line)

        wait_for_rollout_workers(control, args.rollout_workers, args.timeout, on_status=show)
        print(f"run {run_name}: {args.rollout_workers} rollout actors taking requests")
    finally:
        ray.shutdown()
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    import ray

    from zoomrl.control import find_control

    _join_cluster(args.address)
    try:
        control, run_name = find_control(args.run)
        ray.get(control.request_stop.remote())
    finally:
        ray.shutdown()
    print(f"run {run_name}: stops after the step in progress, with a checkpoint "
          f"(continue with zoomrl train --resume RUN_DIR)")
    return 0


def _cmd_rollout(args: argparse.Namespace) -> int:
    from zoomrl.run_setup import prepare_inputs
    from zoomrl.session import run_rollouts

    cfg = load_config(args.config, args.overrides)
    inputs = prepare_inputs(cfg)
    data = args.data or inputs.test_files[0]
    samples = read_samples(data, cfg.data.max_decoded_pixels)[: args.limit]
    print(f"rolling out {len(samples)} prompts x {cfg.rollout.n} from {data} with {inputs.model_path} "
          f"on {cfg.rollout.num_workers} actor(s)")
    summary = run_rollouts(cfg, inputs.model_path, samples, args.out)
    print(json.dumps(summary, indent=2))
    print(f"trajectories: {args.out}")
    return 0


def _model_override(args: argparse.Namespace) -> list[str]:
    """--model as the config override it stands for."""
    return [f"model.path={args.model}"] if args.model else []


def _eval_overrides(args: argparse.Namespace) -> list[str]:
    """The flags of eval as the config overrides they stand for, then the explicit overrides."""
    flags = _model_override(args)
    if args.keep_options:
        flags.append("eval.shuffle_options=false")
    if args.prompt:
        flags.append(f"rollout.prompt_style={args.prompt}")
    return flags + args.overrides


def _cmd_eval(args: argparse.Namespace) -> int:
    from core.progress import ProgressBar
    from zoomrl.evaluate import compare_reports, report_table, run_eval
    from zoomrl.run_setup import ensure_data, ensure_model

    if args.overrides[:1] == ["compare"]:
        if len(args.overrides) != 3:
            raise ConfigError("usage: zoomrl eval compare A.json B.json")
        a, b = (json.loads(Path(path).read_text()) for path in args.overrides[1:])
        print(compare_reports(a, b), end="")
        return 0
    if not args.out:
        raise ConfigError("zoomrl eval needs --out REPORT.json (or: zoomrl eval compare A.json B.json)")
    strays = [item for item in args.data or [] if "=" in item and not Path(item).is_file()]
    if strays:
        raise ConfigError(f"--data took {strays[0]!r}, which is no file: put key=value overrides before "
                          "--data, or another option between them")
    cfg = load_config(args.config, _eval_overrides(args))
    files = args.data or ensure_data(cfg)[1]  # data.test_files, else the synthetic test split
    if not files:
        raise ConfigError("no evaluation data: pass --data FILE... or set data.test_files")
    model_path = ensure_model(cfg.model, cfg.data.synth)
    print(f"evaluating {model_path} on {', '.join(files)} with {cfg.rollout.num_workers} engine(s)",
          flush=True)
    report = run_eval(cfg, model_path, files, args.out, progress=ProgressBar("eval questions"))
    print(report_table(dataclasses.asdict(report)), end="")
    print(f"report: {args.out}; table: {Path(args.out).with_suffix('.txt')}; "
          f"trajectories: {report.trajectories_file}")
    return 0


def _cmd_curate(args: argparse.Namespace) -> int:
    from zoomrl.curate import run_curate
    from zoomrl.run_setup import ensure_model

    cfg = load_config(args.config, _model_override(args) + args.overrides)
    model_path = ensure_model(cfg.model, cfg.data.synth)
    print(f"curating {args.data} with {model_path}, {cfg.curate.k} answers per row", flush=True)
    report = run_curate(cfg, model_path, args.data, args.out, show=lambda line: print(line, flush=True))
    stages = report["stages"]
    print(f"kept {report['kept']} of {report['rows']} rows: dropped "
          + ", ".join(f"{stages[s]['dropped']} at {s}" for s in ("labels", "difficulty", "perception"))
          + f"; {report['perception_not_applicable']} kept rows have no ground-truth box")
    print(f"kept rows: {args.out}; report: {Path(args.out).with_suffix('.report.json')}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from learner.checkpoint import export_hf

    start = time.perf_counter()
    out = export_hf(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} to {out} in {time.perf_counter() - start:.1f}s")
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    from zoomrl.viewer.server import make_server

    try:
        server = make_server(args.target, port=args.port)
    except FileNotFoundError:
        raise
    except OSError as err:  # the port is taken, or not ours to use
        print(f"zoomrl: error: cannot serve on 127.0.0.1:{args.port}: {err}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"zoomrl view: http://{host}:{port}/ shows the trajectories of {args.target} (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _port(text: str) -> int:
    """An argparse type for a TCP port, 0 for any free one."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port (0-65535): {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoomrl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a policy with GRPO (default: tiny-cpu)")
    _add_config_args(train)
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue a run from its latest checkpoint (its saved config, plus overrides)")
    train.set_defaults(func=_cmd_train)

    scale = commands.add_parser("scale", help="change the number of rollout actors of a running run")
    scale.add_argument("--rollout-workers", type=_int_field("rollout.num_workers"), required=True,
                       metavar="N", help="rollout actors wanted; new ones load the current weights, "
                                         "removed ones finish their groups first")
    scale.add_argument("--no-wait", action="store_true", help="return once the request is recorded")
    scale.add_argument("--timeout", type=float, default=1800.0,
                       help="seconds to wait for the new actors (default 1800)")
    scale.set_defaults(func=_cmd_scale)
    stop = commands.add_parser("stop", help="end a running run after its current step, with a checkpoint")
    stop.set_defaults(func=_cmd_stop)
    for command in (scale, stop):
        command.add_argument("--address", help="the Ray cluster (GCS address host:6379; default: "
                                               "RAY_ADDRESS, else the cluster on this machine)")
        command.add_argument("--run", help="the run's directory name, or its path when two runs share a "
                                           "name (needed when several runs are going)")

    data = commands.add_parser("data", help="data utilities")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synth = data_commands.add_parser("synth", help="write the synthetic visual-search set")
    synth.add_argument("--out", required=True, type=_output_folder,
                       help="output folder (train.parquet, test.parquet)")
    for flag, name, what in (("--n", "n_train", "training rows"), ("--n-test", "n_test", "test rows"),
                             ("--size", "image_size", "image side in pixels"),
                             ("--seed", "seed", "generator seed")):
        default = getattr(SynthConfig(), name)
        synth.add_argument(flag, type=_int_field(f"data.synth.{name}"), default=default, dest=name,
                           metavar="N",
                           help=f"{what} (data.synth.{name}; default {default})")
    synth.set_defaults(func=_cmd_data_synth)

    config = commands.add_parser("config", help="inspect configs")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the resolved config")
    _add_config_args(show)
    show.set_defaults(func=_cmd_config_show)
    explain = config_commands.add_parser(
        "explain", help="each field's docstring, type, allowed values and default")
    explain.add_argument("prefix", nargs="?", default="", metavar="KEY_PREFIX",
                         help="a section or key (rollout, rollout.engine, learner.lr) or the start of "
                              "keys (rollout.max); default: every key")
    explain.add_argument("--config", default=DEFAULT_PRESET,
                         help=f"also show the values this preset or YAML file sets apart from the defaults "
                              f"(default: {DEFAULT_PRESET})")
    explain.set_defaults(func=_cmd_config_explain)

    rollout = commands.add_parser("rollout", help="run the rollout actors on prompts, without training")
    _add_config_args(rollout)
    rollout.add_argument("--data", help="a parquet file in the DeepEyes format (default: the test split "
                                        "of the configured data)")
    rollout.add_argument("--limit", type=int, default=8, help="prompts to roll out (default 8)")
    rollout.add_argument("--out", required=True, help="JSON-lines file of trajectories to write")
    rollout.set_defaults(func=_cmd_rollout)

    evaluate = commands.add_parser(
        "eval", help="evaluate a policy on V* / HR-Bench / release-format sets (or: eval compare A B)",
        usage="zoomrl eval [--model PATH] [--data FILE ...] [--config ...] --out REPORT.json "
              "[key=value ...]\n       zoomrl eval compare A.json B.json")
    _add_config_args(evaluate)
    evaluate.add_argument("--model", help="a Hugging Face folder or hub id (default: model.path)")
    evaluate.add_argument("--data", nargs="+", metavar="FILE",
                          help="parquet files, release or benchmark layout (default: the test split "
                               "of the configured data)")
    evaluate.add_argument("--out", help="the report (JSON); the table and the trajectories go next to it")
    evaluate.add_argument("--keep-options", action="store_true",
                          help="keep multiple-choice options as given (default: shuffled, fixed seed)")
    evaluate.add_argument("--prompt", choices=typing.get_args(PromptStyle),
                          help="conversation format (rollout.prompt_style); 'deepeyes' matches the "
                               "released DeepEyes checkpoint")
    evaluate.set_defaults(func=_cmd_eval)

    curate = commands.add_parser("curate", help="filter training data: labels, difficulty, crop utility")
    _add_config_args(curate)
    curate.add_argument("--model", help="the base model (default: model.path)")
    curate.add_argument("--data", required=True, help="a parquet file, release or benchmark layout")
    curate.add_argument("--out", required=True,
                        help="the kept rows (parquet); OUT.report.json and OUT.progress.jsonl beside it")
    curate.set_defaults(func=_cmd_curate)

    export = commands.add_parser("export", help="write a Hugging Face folder from a learner checkpoint")
    export.add_argument("checkpoint", metavar="CKPT",
                        help="a checkpoint folder (step-NNNNNNNN), or a folder of them (the latest)")
    export.add_argument("--out", required=True, help="output folder (transformers and vLLM load it)")
    export.set_defaults(func=_cmd_export)

    view = commands.add_parser("view", help="show logged trajectories (images, zoom boxes, turns) "
                                            "in a browser")
    view.add_argument("target", metavar="RUN_DIR_OR_TRAJECTORIES_FILE",
                      help="a run directory, an eval report's folder, or one trajectories .jsonl file")
    view.add_argument("--port", type=_port, default=0,
                      help="port on 127.0.0.1 (default: a free one; from another machine, forward it "
                           "with ssh -L)")
    view.set_defaults(func=_cmd_view)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, FileNotFoundError, LookupError, TimeoutError) as err:
        print(f"zoomrl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
