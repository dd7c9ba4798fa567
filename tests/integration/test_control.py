"""The run-control actors of several runs on one Ray cluster: named by run directory path, so runs
whose directories share a name (two runs_dir, same second) both start and stay reachable."""

from __future__ import annotations

import pytest
import ray

from zoomrl.control import find_control, running_runs, start_control


def test_runs_whose_directories_share_a_name_each_get_a_control_actor(ray_cluster, tmp_path):
    first, second = tmp_path / "a" / "lr-1e-6-20261129-120000", tmp_path / "b" / "lr-1e-6-20261129-120000"
    controls = [start_control(first, 1), start_control(second, 2)]
    try:
        assert [ray.get(c.requests.remote())[0] for c in controls] == [1, 2]  # both started
        assert {str(first), str(second)} <= set(running_runs())
        with pytest.raises(LookupError, match="2 running zoomrl runs are named 'lr-1e-6-20261129-120000'"):
            find_control(first.name)
        control, found = find_control(str(second))
        assert found == str(second) and ray.get(control.requests.remote())[0] == 2
        with pytest.raises(LookupError, match="no running zoomrl run named 'other'"):
            find_control("other")
    finally:
        for control in controls:
            ray.kill(control)


def test_a_unique_directory_name_finds_its_run(ray_cluster, tmp_path):
    run_dir = tmp_path / "zoomrl-20261129-120001"
    control = start_control(run_dir, 3)
    try:
        handle, found = find_control(run_dir.name)
        assert found == str(run_dir) and ray.get(handle.requests.remote())[0] == 3
    finally:
        ray.kill(control)
