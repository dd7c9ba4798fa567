"""`zoomrl train` refusing a start, as a user runs it: a missing data file, a taken metrics port; no run
directory is left behind."""

from __future__ import annotations

import socket
import subprocess
import sys


def train(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    """`zoomrl train OVERRIDES` in tmp_path, its runs under tmp_path/runs."""
    return subprocess.run([sys.executable, "-m", "zoomrl.cli", "train", f"run.runs_dir={tmp_path / 'runs'}",
                           *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_a_missing_data_file_leaves_no_run_directory(tmp_path):
    result = train(tmp_path, f"data.train_files=[{tmp_path / 'nope.parquet'}]")
    assert result.returncode == 2
    assert "nope.parquet" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_taken_metrics_port_is_one_line_naming_the_key_and_leaves_no_run_directory(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = train(tmp_path, f"metrics.port={port}", "data.synth.n_train=8", "data.synth.n_test=2",
                       "data.synth.image_size=512")
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"zoomrl: error: metrics.port={port}: ") and "metrics.port=0" in line
    assert not (tmp_path / "runs").exists()
