import dataclasses

import pytest

from core.config import (
    ConfigError,
    EngineConfig,
    ModelConfig,
    field_problem,
    load_config,
    preset_names,
    save_config,
    to_yaml,
)
from core.config_explain import all_fields, explain, field_docs, fields_under


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
    with pytest.raises(ConfigError, match="rollout.n=0: must be >= 1"):
        load_config("tiny-cpu", ["rollout.n=0"])
    with pytest.raises(ConfigError, match="min_pixels"):
        load_config("tiny-cpu", ["model.min_pixels=999999999"])


@pytest.mark.parametrize("override, message", [
    ("rollout.temperature=-1", "rollout.temperature=-1.0: must be > 0"),
    ("rollout.temperature=0", "rollout.temperature=0.0: must be > 0"),
    ("eval.temperature=-0.5", "eval.temperature=-0.5: must be >= 0"),
    ("rollout.top_p=2", "rollout.top_p=2.0: must be > 0 and <= 1"),
    ("rollout.top_p=0", "rollout.top_p=0.0: must be > 0 and <= 1"),
    ("rollout.engine.gpu_memory_utilization=1.5", "gpu_memory_utilization=1.5: must be > 0 and <= 1"),
    ("metrics.port=70000", "metrics.port=70000: must be >= 0 and <= 65535"),
    ("run.checkpoint_every=-1", "run.checkpoint_every=-1: must be >= 0"),
    ("data.max_decoded_pixels=-1", "data.max_decoded_pixels=-1: must be >= 1"),
    ("learner.lr=nan", "learner.lr=nan: must be a finite number"),
    ("learner.lr=0", "learner.lr=0.0: must be > 0"),
    ("learner.weight_decay=inf", "learner.weight_decay=inf: must be a finite number"),
    ("reward.weights.default.acc=nan", "reward.weights.default.acc=nan: must be a finite number"),
    ("learner.dual_clip=0.5", "learner.dual_clip=0.5: must be 0 (off) or > 1"),
    ("learner.num_ranks=0", "learner.num_ranks=0: must be >= 1"),
    ("rollout.engine.tensor_parallel_size=0", "tensor_parallel_size=0: must be >= 1"),
    ("data.synth.image_size=64", "data.synth.image_size=64: must be >= 512"),
    ("run.seed=-1", "run.seed=-1: must be >= 0 and < 4294967296"),
])
def test_every_domain_is_checked_at_load_naming_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("tiny-cpu", [override])
    assert message in str(err.value)


def test_values_on_the_edge_of_their_domain_load():
    cfg = load_config("tiny-cpu", ["rollout.top_p=1", "rollout.temperature=0.01", "metrics.port=0",
                                   "metrics.port=65535", "run.checkpoint_every=0", "learner.dual_clip=0",
                                   "rollout.engine.gpu_memory_utilization=1", "eval.temperature=0"])
    assert cfg.metrics.port == 65535 and cfg.learner.dual_clip == 0


def test_every_bad_value_is_named_at_once():
    with pytest.raises(ConfigError) as err:
        load_config("tiny-cpu", ["rollout.n=0", "learner.lr=-1"])
    assert "rollout.n=0" in str(err.value) and "learner.lr=-1.0" in str(err.value)


def test_domains_live_on_the_fields():
    """The check load_config runs is the annotation on the field, reusable for a CLI flag."""
    assert field_problem("rollout.top_p", 2.0) == "must be > 0 and <= 1"
    assert field_problem("data.synth.n_train", 0) == "must be >= 1"
    assert field_problem("rollout.seed", None) is None
    assert field_problem("reward.gating", "sometimes") == "must be one of conditional, unconditional, none"
    assert field_problem("rollout.top_p", 0.5) is None


def test_top_p_below_one_needs_recomputed_ratios():
    with pytest.raises(ConfigError) as err:
        load_config("tiny-cpu", ["rollout.top_p=0.9"])
    message = str(err.value)
    assert "rollout.top_p=0.9" in message and "learner.ratio_against=recompute" in message
    assert "nucleus" in message
    cfg = load_config("tiny-cpu", ["rollout.top_p=0.9", "learner.ratio_against=recompute"])
    assert cfg.rollout.top_p == 0.9


def test_logits_processors_away_from_temperature_one_need_recomputed_ratios():
    """Away from temperature 1 the engine returns log-probs after the logits processors (a forced
    token has log-prob 0 there), which the learner's softmax never reproduces."""
    forcing = "rollout.engine.logits_processors=[actors.forcing:ForcedTurnsLogitsProcessor]"
    with pytest.raises(ConfigError, match="logits_processors at rollout.temperature=0.7"):
        load_config("tiny-cpu", [forcing, "rollout.temperature=0.7"])
    load_config("tiny-cpu", [forcing])  # temperature 1: raw log-probs, as the learner computes them
    load_config("tiny-cpu", [forcing, "rollout.temperature=0.7", "learner.ratio_against=recompute"])


def test_unknown_key_suggests_close_matches():
    with pytest.raises(ConfigError, match="did you mean rollout.temperature"):
        load_config("tiny-cpu", ["rollout.temperatur=1"])
    with pytest.raises(ConfigError, match="did you mean rollout.engine.tensor_parallel_size"):
        load_config("tiny-cpu", ["rollout.tensor_parallel_size=2"])


def test_unknown_key_under_a_dict_valued_field_lists_its_keys():
    with pytest.raises(ConfigError) as err:
        load_config("tiny-cpu", ["reward.weights.default.foo=1"])
    message = str(err.value)
    assert "reward.weights.default.foo" in message
    assert "Valid keys here: reward.weights.default.acc, reward.weights.default.format" in message
    cfg = load_config("tiny-cpu", ["reward.weights.my_source.acc=1"])  # a new data source is fine
    assert cfg.reward.weights["my_source"].acc == 1.0
    assert load_config("tiny-cpu", ["rollout.sampling_extra_args.anything=1"])  # free-form


def test_malformed_yaml_file_is_one_line_naming_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("rollout:\n  n: 4\n  temperature: [1\nlearner:\n  lr: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}:4:") and "not valid YAML" in message and "line 3" in message
    assert "\n" not in message


def test_override_whose_value_is_not_yaml_is_one_line():
    with pytest.raises(ConfigError) as err:
        load_config("tiny-cpu", ["rollout.n=[1"])
    message = str(err.value)
    assert message.startswith("override 'rollout.n=[1': the value is not valid YAML") and "\n" not in message


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


def test_explain_reads_docstring_type_domain_and_default_from_the_dataclasses():
    text = explain("model.dtype")
    assert text.splitlines()[0] == "model.dtype"
    assert field_docs(ModelConfig)["dtype"] in text  # the docstring under the field, not a copy
    assert "type str; allowed one of float32, bfloat16, float16; default float32" in text
    lr = explain("learner.lr", load_config("tiny-cpu"), "tiny-cpu")
    assert "type float; allowed > 0; default 1.0e-06 (tiny-cpu sets 0.0001)" in lr
    assert "type int | None; allowed >= 0 and < 4294967296; default null" in explain("rollout.seed")
    assert "allowed each one of image_zoom_in_tool" in explain("tools.enabled")


def test_explain_reads_multi_line_docstrings_whole():
    doc = field_docs(ModelConfig)["max_pixels"]
    assert doc.startswith("Largest pixel count") and doc.endswith("= 256 tokens).") and "\n" in doc


def test_explain_of_a_section_lists_it_and_every_key_under_it():
    keys = [f.key for f in fields_under("rollout.engine")]
    assert keys[0] == "rollout.engine" and len(keys) == 1 + len(dataclasses.fields(EngineConfig))
    assert [f.key for f in fields_under("rollout.max")] == [
        "rollout.max_tool_calls", "rollout.max_response_tokens", "rollout.max_tokens_per_turn",
        "rollout.max_images"]
    assert "reward.weights.<key>.acc" in [f.key for f in fields_under("reward")]


def test_every_config_field_has_a_docstring():
    missing = [f.key for f in all_fields() if not f.doc]
    assert not missing, f"fields without a docstring under them in core/config.py: {missing}"


def test_explain_of_an_unknown_key_suggests_close_matches():
    with pytest.raises(ConfigError, match="unknown config key 'rollout.tmperature'; did you mean "
                                          "rollout.temperature"):
        explain("rollout.tmperature")
