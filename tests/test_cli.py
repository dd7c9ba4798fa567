"""The `zoomrl` console script, run as a user runs it."""

import subprocess
import sys

import yaml


def zoomrl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "zoomrl.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def test_config_show_prints_the_resolved_config():
    result = zoomrl("config", "show", "--config", "qwen2.5-vl-7b", "rollout.n=4")
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    assert cfg["rollout"]["n"] == 4 and cfg["learner"]["lr"] == 1e-6


def test_bad_override_exits_2_with_the_valid_keys():
    result = zoomrl("config", "show", "learner.learning_rate=1")
    assert result.returncode == 2
    assert "unknown config key 'learner.learning_rate'" in result.stderr
    assert "learner.lr" in result.stderr


def test_data_synth_writes_both_splits(tmp_path):
    result = zoomrl("data", "synth", "--out", str(tmp_path), "--n", "3", "--n-test", "2",
                    "--size", "512", "--seed", "5")
    assert result.returncode == 0, result.stderr
    from zoomrl.data import read_samples

    assert len(read_samples(tmp_path / "train.parquet")) == 3
    assert len(read_samples(tmp_path / "test.parquet")) == 2


def test_unbuilt_subcommands_do_not_exist():
    result = zoomrl("scale", "--rollout-workers", "2")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_train_does_the_first_half_of_a_run(tmp_path):
    result = zoomrl("train", f"run.runs_dir={tmp_path / 'runs'}", f"model.cache_dir={tmp_path}",
                    "data.synth.n_train=4", "data.synth.n_test=2", "data.synth.image_size=512")
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "runs").iterdir()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["synth"]["n_train"] == 4 and saved["run"]["runs_dir"] == str(tmp_path / "runs")
    assert "train data: 4 prompts" in result.stdout
    assert "not built yet" in result.stdout
    assert any((tmp_path / "models").iterdir()) and any((tmp_path / "data").iterdir())
