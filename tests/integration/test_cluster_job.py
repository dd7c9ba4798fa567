"""A run as users run it on a cluster, on this machine: `ray start --head`, `ray job submit` of the
tiny-cpu run, Prometheus (Debian's server, with deploy/prometheus/prometheus.yml) scraping it,
`zoomrl scale` up and down while it trains, `zoomrl stop`, then the job's status and logs through
the Jobs API, and the count of every group the run requested."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers import DEPLOY, ROOT
from tests.helpers.programs import require_promtool

RUN = ["--config", "tiny-cpu", "rollout.n=2", "rollout.max_tokens_per_turn=24",
       "rollout.max_response_tokens=64", "data.synth.n_train=8", "data.synth.n_test=2",
       "data.synth.image_size=512", "learner.prompts_per_step=2", "run.total_steps=500",
       "run.checkpoint_every=0", "run.eval_every=0"]  # validation: tests/integration/test_train_e2e.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict:
    """The venv's commands first on PATH (the job's `zoomrl` entrypoint), token auth off."""
    return {**os.environ, "RAY_AUTH_MODE": "disabled",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def ray_head():
    """A Ray head started with `ray start --head --block` in its own process group and its own
    temp dir, so stopping it kills only this cluster (`ray stop` would stop every cluster here)."""
    temp_dir = tempfile.mkdtemp(prefix="zr", dir="/tmp")  # short: Ray's socket paths live under it
    head = {"gcs": f"127.0.0.1:{free_port()}", "dashboard": f"http://127.0.0.1:{free_port()}",
            "metrics_port": free_port(), "temp_dir": temp_dir}
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", f"--port={head['gcs'].split(':')[1]}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={head['dashboard'].rsplit(':', 1)[1]}",
               f"--metrics-export-port={head['metrics_port']}",
               f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
               "--num-cpus=8", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    process = subprocess.Popen(command, env=environment(), start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + 180
    while True:
        try:
            head["client"] = JobSubmissionClient(head["dashboard"])
            break
        except Exception:
            if process.poll() is not None or time.time() > deadline:
                raise AssertionError("ray start failed:\n" + process.stdout.read()) from None
            time.sleep(2)
    yield head
    kill_group(process)
    # raylet-spawned workers may have left the group; everything of this cluster names temp_dir
    subprocess.run(["pkill", "-9", "-f", temp_dir], check=False)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def prometheus(ray_head, tmp_path):
    """Debian's Prometheus server with deploy/prometheus/prometheus.yml, pointed at this cluster's
    discovery file and the run's driver port, scraping every second."""
    require_promtool()
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    discovery = f"{ray_head['temp_dir']}/prom_metrics_service_discovery.json"  # Ray writes it there
    jobs["ray"]["file_sd_configs"][0]["files"] = [discovery]
    driver_port = free_port()
    jobs["zoomrl-driver"]["static_configs"][0]["targets"] = [f"127.0.0.1:{driver_port}"]
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [shutil.which("prometheus"), f"--config.file={config_path}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address={url.removeprefix('http://')}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/-/ready", timeout=5)
            break
        except OSError:
            assert time.time() < deadline and process.poll() is None, "prometheus did not start"
            time.sleep(1)
    yield {"url": url, "driver_port": driver_port}
    kill_group(process)


def query(prometheus_url: str, expr: str) -> list[float]:
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    result = json.loads(urllib.request.urlopen(url, timeout=10).read())["data"]["result"]
    return [float(series["value"][1]) for series in result]


def wait_for(predicate, what: str, timeout_s: float = 600, every_s: float = 2.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def zoomrl(*args: str, timeout_s: float = 900) -> str:
    result = subprocess.run([sys.executable, "-m", "zoomrl.cli", *args], env=environment(),
                            capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def steps(runs_dir: Path) -> list[dict]:
    files = list(runs_dir.glob("*/metrics.jsonl"))
    return [json.loads(line) for line in files[0].read_text().splitlines()] if files else []


def test_ray_job_scaled_while_it_trains_and_scraped_by_prometheus(ray_head, prometheus, tmp_path):
    runs_dir, client = tmp_path / "runs", ray_head["client"]
    subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_head["dashboard"],
         "--submission-id", "zoomrl-tiny", "--no-wait", "--working-dir", str(ROOT),
         "--runtime-env", str(DEPLOY / "runtime-env.yaml"), "--",
         "zoomrl", "train", *RUN, f"run.runs_dir={runs_dir}", f"metrics.port={prometheus['driver_port']}",
         "run.forward_actor_logs=true"],
        env=environment(), check=True, capture_output=True, timeout=120)
    try:
        def first_step() -> list[dict]:
            if client.get_job_status("zoomrl-tiny").is_terminal():
                raise AssertionError("the job ended early:\n" + client.get_job_logs("zoomrl-tiny")[-3000:])
            return steps(runs_dir)
        wait_for(first_step, "the first step", timeout_s=900)
        gcs = ["--address", ray_head["gcs"]]

        out = zoomrl("scale", "--rollout-workers", "2", *gcs)
        assert "2 rollout actors taking requests" in out
        wait_for(lambda: any(s["rollout_workers"] == 2 for s in steps(runs_dir)), "a step with 2 actors")
        out = zoomrl("scale", "--rollout-workers", "1", *gcs)
        assert "1 rollout actors taking requests" in out

        def scraped() -> bool:  # driver endpoint and Ray's agents, through service discovery
            return (query(prometheus["url"], "max_over_time(zoomrl_rollout_workers[1h])") == [2.0]
                    and query(prometheus["url"], "zoomrl_accuracy")
                    and query(prometheus["url"], "zoomrl_queue_depth")
                    and query(prometheus["url"], "ray_zoomrl_rollout_tokens_per_s"))
        wait_for(scraped, "zoomrl_* and ray_zoomrl_* series in Prometheus", timeout_s=120)

        zoomrl("stop", *gcs)
        status = wait_for(lambda: client.get_job_status("zoomrl-tiny").is_terminal()
                          and client.get_job_status("zoomrl-tiny"), "the job to end", timeout_s=300)
    finally:
        if not client.get_job_status("zoomrl-tiny").is_terminal():
            client.stop_job("zoomrl-tiny")
    logs = client.get_job_logs("zoomrl-tiny")
    assert status.value == "SUCCEEDED", logs[-3000:]
    assert "scaling rollout actors: 1 -> 2" in logs and "scaling rollout actors: 2 -> 1" in logs
    assert "stopped by zoomrl stop at" in logs and "step 1/500" in logs
    assert "s] Ray up: joined the cluster at " in logs and "s] rollout engine 1/1 ready" in logs
    # run.forward_actor_logs: what the engines and learner ranks print is in the job's logs
    assert "(RolloutWorker pid=" in logs and "(LearnerWorker pid=" in logs

    # Every group the run requested is accounted for: trained once, dropped as stale, or pending in
    # the final checkpoint (re-requested by --resume). Scaling down lost none.
    records = steps(runs_dir)
    trained = [b["group_id"] for record in records for b in record["batch"]]
    checkpoint = sorted(runs_dir.glob("*/checkpoints/step-*"))[-1]
    extra = json.loads((checkpoint / "trainer.json").read_text())["extra"]
    pending = [group_id for _, group_id in extra["pending"]]
    assert len(set(trained)) == len(trained) and not set(trained) & set(pending)
    assert len(trained) + len(pending) + extra["dropped_groups"] == extra["stream"]["issued"]
    assert records[-1]["reissued_groups"] == 0
    assert checkpoint.name == f"step-{records[-1]['step']:08d}"
