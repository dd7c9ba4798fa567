"""The `zoomrl` console script, run as a user runs it."""


import pytest
import yaml

from tests.helpers.cli import zoomrl
from zoomrl.cli import main


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
    from core.data import read_samples

    assert len(read_samples(tmp_path / "train.parquet")) == 3
    assert len(read_samples(tmp_path / "test.parquet")) == 2


@pytest.mark.parametrize("flags, message", [
    (["--size", "64"], "argument --size: must be >= 512 (as data.synth.image_size), got 64"),
    (["--n", "-1"], "argument --n: must be >= 1 (as data.synth.n_train), got -1"),
    (["--n-test", "0"], "argument --n-test: must be >= 1 (as data.synth.n_test), got 0"),
    (["--seed", "-1"], "argument --seed: must be >= 0 and < 4294967296"),
    (["--n", "many"], "argument --n: not an integer: 'many'"),
])
def test_data_synth_refuses_arguments_outside_their_config_domain(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "synth", "--out", str(tmp_path / "out"), *flags])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_data_synth_refuses_a_file_as_its_output_folder(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    for out in (taken, taken / "inside"):
        with pytest.raises(SystemExit) as exit_:
            main(["data", "synth", "--out", str(out), "--n", "1", "--n-test", "1", "--size", "512"])
        assert exit_.value.code == 2
        assert f"argument --out: {taken} is a file, not a folder" in capsys.readouterr().err


def test_bad_config_input_is_a_one_line_error(tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("rollout:\n  n: [1\n")
    for argv, says in ((["config", "show", "rollout.n=[1"], "not valid YAML"),
                       (["config", "show", "--config", str(bad_yaml)], f"{bad_yaml}:3:1: not valid YAML"),
                       (["config", "show", "metrics.port=70000"], "metrics.port=70000: must be"),
                       (["config", "show", "rollout.temperature=-1"], "temperature=-1.0: must be > 0")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("zoomrl: error: ") and says in err and err.count("\n") == 1, err


def test_scale_refuses_a_dashboard_address_and_a_count_below_one():
    result = zoomrl("scale", "--rollout-workers", "2", "--address", "http://127.0.0.1:8265")
    assert result.returncode == 2 and "GCS address" in result.stderr and "ray job submit" in result.stderr
    result = zoomrl("scale", "--rollout-workers", "0")
    assert result.returncode == 2 and "--rollout-workers: must be >= 1" in result.stderr


def test_config_explain_prints_the_fields_under_a_prefix(capsys):
    assert main(["config", "explain", "queue"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("queue  (section)\n    The replay queue between rollout actors and the learner.")
    assert "queue.max_staleness\n" in out and "type int; allowed >= 0; default 1" in out
    assert main(["config", "explain", "queue.capacity"]) == 0  # the start of a key
    assert capsys.readouterr().out.startswith("queue.capacity_groups\n")
    assert main(["config", "explain", "queue.stalenes"]) == 2
    assert "did you mean queue.max_staleness?" in capsys.readouterr().err
