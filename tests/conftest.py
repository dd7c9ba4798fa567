"""Shared fixtures: the tiny model, a small synthetic set, and a real local Ray cluster."""

from __future__ import annotations

import os

import pytest

from core.config import load_config
from tests.helpers.judge_stub import judge_server  # noqa: F401 (a fixture for every test)


@pytest.fixture(scope="session")
def tiny_cfg():
    """The tiny-cpu config (the embedded default)."""
    return load_config("tiny-cpu")


@pytest.fixture(scope="session")
def tiny_model_path(tiny_cfg) -> str:
    """Folder of the tiny Qwen2.5-VL (built once per cache, ~5 s)."""
    from zoomrl.run_setup import ensure_model

    return ensure_model(tiny_cfg.model)


@pytest.fixture(scope="module")
def groups(tiny_model_path):
    """Two GRPO groups of 4 real multi-turn trajectories of the tiny model (tests/helpers/trajectories.py);
    a module's own copy, so its tests may change them."""
    from tests.helpers.trajectories import make_groups

    return make_groups(tiny_model_path, num_groups=2, n=4, seed=0)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A small synthetic set (8 train, 4 test rows of 1024 px images)."""
    from core.synth import write_synthetic

    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, n_train=8, n_test=4, size=1024, seed=0)
    return out


@pytest.fixture(scope="module")
def view(original):
    """What the model first sees of the module's `original` (a numpy image fixture) under the
    default pixel budget."""
    from core.config import ModelConfig
    from core.images import encode_png
    from tools import initial_view

    return initial_view(encode_png(original), ModelConfig(), max_decoded_pixels=10**8)


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster for the test session (2 CPUs, no dashboard)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()
