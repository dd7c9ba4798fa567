"""A vLLM engine dies with the process that owns it, and what a killed engine leaves is removed.

Ray ends a killed actor's process group (engine included) while its raylet can; an engine must not
depend on that (the fault finding: after kill -9 of `zoomrl train`, engine core and worker stayed,
re-parented to PID 1 with the model in memory). Here the owner is a plain process, killed with
SIGKILL, with nobody left to clean up after it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil

from actors.engine import SOCKETS_PREFIX, WEIGHTS_PREFIX, _remove_folders_of_dead_engines
from tests.helpers import ROOT

OWNER = """
import json, os, time
from actors.engine import VLLMEngine
from core.config import load_config
from zoomrl.run_setup import ensure_model

cfg = load_config("tiny-cpu")
engine = VLLMEngine(ensure_model(cfg.model), cfg)
print("OWNER", json.dumps({"pid": os.getpid()}), flush=True)
time.sleep(600)
"""


def vllm_processes(pid: int) -> dict[str, psutil.Process]:
    """The vLLM processes under `pid`, by title (VLLM::EngineCore, VLLM::Worker...)."""
    titles = {}
    for child in psutil.Process(pid).children(recursive=True):
        title = " ".join(child.cmdline()).strip()
        if title.startswith("VLLM::"):
            titles[title] = child
    return titles


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_an_engine_dies_with_its_killed_owner(tiny_model_path):
    # In a Ray actor vLLM always spawns its processes (it forks elsewhere): spawn here too.
    env = {**os.environ, "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True, env=env,
                             cwd=ROOT)
    engine: dict[str, psutil.Process] = {}
    try:
        line = ""
        while not line.startswith("OWNER "):  # vLLM logs on stdout too
            line = owner.stdout.readline()
            assert line, f"the owner exited ({owner.wait()}) before its engine was up"
        engine = vllm_processes(json.loads(line.removeprefix("OWNER "))["pid"])
        assert "VLLM::EngineCore" in engine, list(engine)
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        deadline = time.monotonic() + 10
        while any(alive(p) for p in engine.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert {title: alive(p) for title, p in engine.items()} == dict.fromkeys(engine, False)
    finally:
        owner.kill()
        for process in engine.values():  # what this test started, if it outlived its owner
            if alive(process):
                process.kill()


def test_folders_of_killed_engines_are_removed_and_others_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a PID no process has any more
    killed, live = f"{WEIGHTS_PREFIX}{dead.pid}-a1", f"{WEIGHTS_PREFIX}{os.getpid()}-b2"
    kept = [live, f"{SOCKETS_PREFIX}{dead.pid}-c3", f"{WEIGHTS_PREFIX}notapid-d4"]  # other prefix; no PID
    for name in [killed, *kept]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"weights")
    _remove_folders_of_dead_engines(tmp_path, WEIGHTS_PREFIX)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
