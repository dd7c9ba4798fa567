import pytest

from zoomrl.config import ConfigError, load_config, preset_names, save_config, to_yaml


def test_default_is_tiny_cpu():
    cfg = load_config()
    assert cfg.model.path == "tiny"
    assert cfg.learner.num_ranks == 2 and cfg.learner.num_gpus_per_rank == 0
    assert cfg.run.name == "tiny-cpu"


def test_presets_ship_with_the_package():
    assert {"tiny-cpu", "qwen2.5-vl-7b", "qwen2.5-vl-32b"} <= set(preset_names())


def test_7b_preset_is_the_reference_recipe():
    cfg = load_config("qwen2.5-vl-7b")
    assert cfg.learner.prompts_per_step == 256 and cfg.rollout.n == 16
    assert cfg.learner.lr == 1e-6 and cfg.learner.weight_decay == 0.01
    assert cfg.learner.clip_ratio_low == cfg.learner.clip_ratio_high == 0.2
    assert cfg.learner.dual_clip == 3.0 and cfg.learner.grad_clip == 1.0
    assert cfg.learner.kl_coef == 0.0 and cfg.learner.loss_agg == "token-mean"
    assert cfg.rollout.max_tool_calls == 6 and cfg.rollout.max_response_tokens == 20480
    assert cfg.rollout.max_tokens_per_turn == 10240 and cfg.rollout.temperature == 1.0
    assert cfg.reward.weights["default"].acc == 0.8 and cfg.reward.weights["default"].tool == 1.2
    assert cfg.reward.gating == "conditional"


def test_32b_preset_uses_tensor_parallel_4():
    cfg = load_config("qwen2.5-vl-32b")
    assert cfg.rollout.engine.tensor_parallel_size == 4 == cfg.rollout.num_gpus_per_worker


def test_overrides_apply_with_types():
    cfg = load_config("tiny-cpu", ["rollout.n=8", "learner.lr=1e-6", "data.shuffle=false"])
    assert cfg.rollout.n == 8 and cfg.learner.lr == 1e-6 and cfg.data.shuffle is False


def test_unknown_override_names_the_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config("tiny-cpu", ["rollout.nn=3"])
    message = str(err.value)
    assert "rollout.nn" in message and "rollout.n," in message and "rollout.temperature" in message


def test_unknown_top_level_section_names_the_sections():
    with pytest.raises(ConfigError) as err:
        load_config("tiny-cpu", ["learnr.lr=1"])
    assert "learnr" in str(err.value) and "learner" in str(err.value)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="rollout.n"):
        load_config("tiny-cpu", ["rollout.n=many"])


def test_invalid_choice_lists_the_choices():
    with pytest.raises(ConfigError, match="conditional, unconditional, none"):
        load_config("tiny-cpu", ["reward.gating=sometimes"])


def test_out_of_range_values_are_refused():
    with pytest.raises(ConfigError, match="rollout.n must be > 0"):
        load_config("tiny-cpu", ["rollout.n=0"])
    with pytest.raises(ConfigError, match="min_pixels"):
        load_config("tiny-cpu", ["model.min_pixels=999999999"])


def test_override_without_equals_is_refused():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("tiny-cpu", ["rollout.n"])


def test_yaml_file_with_unknown_nested_key_names_file_and_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("rollout:\n  engine:\n    tensor_parallel: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    message = str(err.value)
    assert str(path) in message and "rollout.engine.tensor_parallel" in message
    assert "rollout.engine.tensor_parallel_size" in message


def test_missing_config_file_is_an_error():
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config("/nonexistent/config.yaml")


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config("qwen2.5-vl-7b", ["rollout.n=4"])
    save_config(cfg, tmp_path / "config.yaml")
    assert to_yaml(load_config(str(tmp_path / "config.yaml"))) == to_yaml(cfg)
