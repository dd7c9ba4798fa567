"""The one config system: OmegaConf structured dataclasses, YAML presets, dotted overrides.

Defaults live only here, as dataclass field defaults, and follow the DeepEyes reference recipe
where it states a value. Presets (`zoomrl/presets/*.yaml`) change what a machine size needs;
`tiny-cpu` is the preset used when none is named. Load order: defaults <- preset <- overrides; a YAML
file may start from a preset with a top-level `preset: NAME` key (the cluster configs in deploy/ do).
An unknown key, a wrong type or an invalid value raises `ConfigError` naming the key and, for
unknown keys, the valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

DEFAULT_PRESET = "tiny-cpu"


class ConfigError(ValueError):
    """A config key, type or value is wrong; the message says which and what is allowed."""


@dataclass
class TinyModelConfig:
    """Dimensions of the tiny random-weight Qwen2.5-VL built locally when `model.path` is 'tiny'."""

    hidden_size: int = 128
    """Text decoder width."""
    intermediate_size: int = 256
    """Text MLP width."""
    num_hidden_layers: int = 2
    """Text decoder layers."""
    num_attention_heads: int = 2
    """Query heads (head_dim = hidden_size / heads = 64, a size vLLM's CPU attention supports)."""
    num_key_value_heads: int = 1
    """KV heads (grouped-query attention)."""
    vision_depth: int = 2
    """Vision transformer blocks."""
    vision_hidden_size: int = 64
    """Vision transformer width."""
    vision_intermediate_size: int = 128
    """Vision MLP width."""
    vision_num_heads: int = 2
    """Vision attention heads."""
    vocab_size: int = 512
    """Target size of the locally trained byte-level BPE vocabulary (special tokens included)."""
    seed: int = 0
    """Seed of the random weights."""


@dataclass
class ModelConfig:
    """Which policy to train and how images become tokens."""

    path: str = "tiny"
    """A Hugging Face folder or hub id of a Qwen2.5-VL model, or 'tiny' for the locally built one."""
    cache_dir: str = "~/.cache/zoomrl"
    """Where the tiny model and the synthetic data are built and cached."""
    dtype: str = "float32"
    """Weights dtype for the rollout engine and published weights: float32 | bfloat16 | float16."""
    min_pixels: int = 4 * 28 * 28
    """Smallest pixel count an image (or crop) is resized up to (Qwen2.5-VL smart resize)."""
    max_pixels: int = 256 * 28 * 28
    """Largest pixel count an image (or crop) is resized down to; sets the image token budget
    (one token per 28x28 merged patch: 200704 px = 448x448 = 256 tokens)."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Dimensions used when path is 'tiny'."""


@dataclass
class SynthConfig:
    """The synthetic V*-like visual-search set used when no data files are given."""

    n_train: int = 256
    """Training rows."""
    n_test: int = 64
    """Test rows (the default evaluation set)."""
    image_size: int = 2048
    """Side of the square synthetic images, in pixels."""
    seed: int = 0
    """Seed of the generator; the same seed gives the same files."""


@dataclass
class DataConfig:
    """Training and evaluation prompts."""

    train_files: list[str] = field(default_factory=list)
    """Parquet files in the DeepEyes release format; empty means the synthetic set below."""
    test_files: list[str] = field(default_factory=list)
    """Evaluation parquet files; empty means the synthetic test split."""
    synth: SynthConfig = field(default_factory=SynthConfig)
    """The synthetic set built (and cached) when train_files is empty."""
    shuffle: bool = True
    """Shuffle prompts each epoch."""
    seed: int = 0
    """Seed of the prompt order."""
    max_decoded_pixels: int = 100_000_000
    """Images decoding to more pixels than this are refused (decompression-bomb guard)."""


@dataclass
class EngineConfig:
    """The vLLM engine inside each rollout actor."""

    tensor_parallel_size: int = 1
    """GPUs per engine (vLLM tensor parallelism)."""
    gpu_memory_utilization: float = 0.8
    """Fraction of GPU memory vLLM may take (GPU only)."""
    cpu_kvcache_space_gib: int = 2
    """KV-cache size on CPU (VLLM_CPU_KVCACHE_SPACE), so several engines fit in RAM."""
    max_model_len: int = 32768
    """Longest sequence (prompt + all turns) the engine accepts."""
    enable_prefix_caching: bool = True
    """Reuse KV of shared prefixes (the group's common prompt, earlier turns)."""
    enforce_eager: bool = False
    """Disable CUDA graphs / compilation (faster start, slower decode)."""
    logits_processors: list[str] = field(default_factory=list)
    """Extra vLLM logits processor classes loaded into the engine, as 'module:Class' (e.g.
    'actors.forcing:ForcedTurnsLogitsProcessor', which scripts assistant turns for demos and tests)."""
    weights_dir: str = ""
    """Folder where received weights are staged as safetensors for vLLM to reload ('' = the
    system temp folder; /dev/shm keeps them in RAM)."""


@dataclass
class RolloutConfig:
    """Rollout actors and the iMCoT multi-turn loop."""

    num_workers: int = 1
    """Rollout actors (one vLLM engine each); can be changed while a run goes."""
    num_cpus_per_worker: float = 1.0
    """Ray CPUs reserved by each rollout actor."""
    num_gpus_per_worker: float = 0.0
    """Ray GPUs reserved by each rollout actor (= engine.tensor_parallel_size on GPU)."""
    n: int = 16
    """Rollouts per prompt (the GRPO group size)."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_tool_calls: int = 6
    """Tool calls allowed in one trajectory (paper 6; released 7B script 4)."""
    max_response_tokens: int = 20480
    """Tokens the policy may generate over all turns of one trajectory."""
    max_tokens_per_turn: int = 10240
    """Tokens the policy may generate in one assistant turn."""
    max_images: int = 32
    """Images (original + crops) allowed in one trajectory."""
    prompt_style: str = "deepeyes"
    """Conversation format; 'deepeyes' matches the released DeepEyes checkpoint."""
    seed: int | None = None
    """Sampling seed: each turn of each trajectory gets a seed derived from it, the group id and
    the trajectory index, so a rollout can be replayed exactly; None draws fresh randomness."""
    sampling_extra_args: dict[str, Any] = field(default_factory=dict)
    """Passed to every engine request as vLLM's SamplingParams.extra_args, where custom logits
    processors read it (e.g. forced_turns: [text, ...] for the forcing processor)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """vLLM engine settings."""


@dataclass
class ToolsConfig:
    """The image tools the policy may call."""

    enabled: list[str] = field(default_factory=lambda: ["image_zoom_in_tool", "image_rotate_tool"])
    """Tool names offered to the policy in the system prompt."""
    min_box_side: int = 28
    """A zoom box's short side (in original-image pixels) must be at least this (one merged patch)."""
    max_aspect_ratio: float = 100.0
    """A zoom box's long/short side ratio must be at most this."""


@dataclass
class RewardWeights:
    """Weights of the reward parts: R = acc*R_acc + format*R_format + gate * tool*R_tool."""

    acc: float = 0.8
    """Weight of accuracy (0 or 1)."""
    format: float = 0.2
    """Weight of the format part (0 or -1)."""
    tool: float = 1.2
    """Weight of the tool bonus (0 or 1)."""


@dataclass
class JudgeConfig:
    """Optional LLM judge behind an OpenAI-compatible endpoint, asked only when rules cannot decide."""

    base_url: str = ""
    """Endpoint, e.g. http://judge:8000/v1; empty means no judge (rules only)."""
    model: str = "Qwen2.5-72B-Instruct"
    """Model name sent to the endpoint."""
    api_key_env: str = "ZOOMRL_JUDGE_API_KEY"
    """Environment variable holding the API key (the key itself is never in config or logs)."""
    timeout_s: float = 30.0
    """Seconds one request may wait on the connection (to connect, and for each read); a request
    that times out counts as a failed attempt and is retried."""
    max_retries: int = 4
    """Retries with exponential backoff before the reward task fails loudly."""
    backoff_s: float = 1.0
    """Wait before the first retry; each later retry waits twice as long (times a random 0.5-1
    jitter, so many reward tasks do not retry in lockstep)."""
    max_concurrency: int = 16
    """Requests in flight at once from one process (a reward task's worker)."""
    cache_size: int = 65536
    """Verdicts kept per process, keyed by (question, answer, prediction): a group of n rollouts
    often repeats one prediction, which is then asked once."""


@dataclass
class RewardConfig:
    """The DeepEyes reward: R = R_acc + R_format + 1[R_acc > 0] * R_tool (gating selectable)."""

    gating: str = "conditional"
    """Tool bonus gating: conditional (only when correct) | unconditional | none."""
    weights: dict[str, RewardWeights] = field(
        default_factory=lambda: {
            "default": RewardWeights(),
            "thinklite_eureka": RewardWeights(acc=1.2, format=0.4, tool=0.0),
        }
    )
    """Weights per data_source; 'default' applies to every source not listed."""
    max_answer_chars: int = 1000
    """Answers this long or longer get format -1 and accuracy 0 (anti-hacking)."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The optional LLM judge."""


@dataclass
class LearnerConfig:
    """The FSDP2 learner group and the GRPO update."""

    num_ranks: int = 8
    """Learner ranks (Ray actors in one torch.distributed group)."""
    num_cpus_per_rank: float = 1.0
    """Ray CPUs per rank."""
    num_gpus_per_rank: float = 1.0
    """Ray GPUs per rank (0 = CPU with gloo)."""
    prompts_per_step: int = 256
    """Groups (prompts) per policy update; the batch is prompts_per_step * rollout.n trajectories."""
    lr: float = 1e-6
    """AdamW learning rate (constant)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    clip_ratio_low: float = 0.2
    """PPO clip: ratio >= 1 - clip_ratio_low."""
    clip_ratio_high: float = 0.2
    """PPO clip: ratio <= 1 + clip_ratio_high."""
    dual_clip: float = 3.0
    """Dual-clip bound for negative advantages (0 disables)."""
    loss_agg: str = "token-mean"
    """Loss aggregation: token-mean | seq-mean-token-mean."""
    kl_coef: float = 0.0
    """KL penalty to a reference model (k3); 0 means no reference model is built."""
    norm_adv_by_std: bool = True
    """Divide group advantages by the group's reward std (GRPO); False keeps mean-centering only."""
    filter_zero_adv_groups: bool = False
    """Drop groups whose rewards are all equal (their advantages are all zero)."""
    ratio_against: str = "behavior"
    """Importance ratio against: behavior (rollout logprobs) | recompute (learner, before update)."""
    micro_batch_tokens: int = 16384
    """Token budget of one micro-batch (gradient accumulation to the global batch)."""
    mixed_precision: bool = True
    """bf16 compute with fp32 master weights on GPU; CPU always runs fp32."""
    activation_checkpointing: bool = True
    """Recompute activations in backward to save memory."""
    updates_per_step: int = 1
    """Optimizer steps per policy version: the batch's groups split into this many mini-batches
    (1 = the reference recipe, one update per rollout batch)."""
    compute_entropy: bool = True
    """Report the policy's mean token entropy (costs one softmax over the vocabulary per token)."""


@dataclass
class WeightSyncConfig:
    """How new weights reach the rollout engines."""

    method: str = "object_store"
    """object_store (one ray.put of the gathered state dict) | nccl (broadcast, GPU clusters)."""


@dataclass
class QueueConfig:
    """The replay queue between rollout actors and the learner."""

    capacity_groups: int = 512
    """Most scored groups held at once; producers wait when full."""
    max_staleness: int = 1
    """Groups from policies more than this many versions old are dropped; 0 = synchronous."""


@dataclass
class RunConfig:
    """The run itself: length, seeds, outputs."""

    name: str = "zoomrl"
    """Run name; the run directory is runs_dir/name-<timestamp>."""
    runs_dir: str = "runs"
    """Parent folder of run directories."""
    total_steps: int = 80
    """Policy updates to run (the paper trains about 80 steps)."""
    seed: int = 0
    """Global seed."""
    checkpoint_every: int = 10
    """Save a checkpoint every this many steps (0 = only at the end)."""


@dataclass
class MetricsConfig:
    """Where metrics go: Ray metrics in every actor, a Prometheus endpoint in the driver."""

    host: str = "127.0.0.1"
    """Interface of the driver's Prometheus endpoint."""
    port: int = 9464
    """Port of the driver's Prometheus endpoint (0 = any free port)."""
    sample_trajectories: int = 4
    """Trajectories written to the run directory per step, for viewing."""


@dataclass
class EvalConfig:
    """`zoomrl eval`: how evaluation questions are asked and answered."""

    n: int = 1
    """Trajectories per question (replaces rollout.n). Accuracy is over all trajectories; its
    Wilson interval treats them as independent draws, which is exact only for n = 1."""
    temperature: float = 0.0
    """Sampling temperature at evaluation (replaces rollout.temperature); 0 = greedy."""
    shuffle_options: bool = True
    """Put each multiple-choice question's options in a fixed random order (the reference release
    once put every answer at A); False keeps them as given."""
    shuffle_seed: int = 0
    """Seed of the option orders: a question's order depends only on this seed and its id."""


@dataclass
class CurateConfig:
    """`zoomrl curate`: the three-stage filter of training data (DeepEyes' data curation)."""

    k: int = 8
    """Answers sampled per item (at rollout.temperature; replaces rollout.n) to measure how often
    the model solves it, with the full image and with the ground-truth crop."""
    crop_context: float = 0.5
    """The ground-truth crop is the union of an item's boxes widened on each side by this
    fraction of its width and height, clipped to the image."""


@dataclass
class Config:
    """Everything a run needs. Sections follow the parts of DESIGN.md."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    weight_sync: WeightSyncConfig = field(default_factory=WeightSyncConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    run: RunConfig = field(default_factory=RunConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)


PROMPT_STYLES = ("deepeyes",)
"""Conversation formats actors/prompt.py renders (one so far: the released DeepEyes format)."""

# Values a string field may take; checked at load so a typo never reaches a run.
_CHOICES: dict[str, tuple[str, ...]] = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "rollout.prompt_style": PROMPT_STYLES,
    "reward.gating": ("conditional", "unconditional", "none"),
    "learner.loss_agg": ("token-mean", "seq-mean-token-mean"),
    "learner.ratio_against": ("behavior", "recompute"),
    "weight_sync.method": ("object_store", "nccl"),
}


def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("zoomrl.presets").iterdir()
                  if p.name.endswith(".yaml"))


def _read_yaml(preset_or_path: str) -> DictConfig:
    if preset_or_path in preset_names():
        text = resources.files("zoomrl.presets").joinpath(f"{preset_or_path}.yaml").read_text()
        return OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    path = Path(preset_or_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"config '{preset_or_path}' is neither a preset ({', '.join(preset_names())}) "
            "nor a YAML file"
        )
    loaded = OmegaConf.load(path)
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: a config file must hold a mapping at the top level")
    if "preset" in loaded:  # a file that starts from a preset and changes a few keys (deploy/configs)
        base = loaded.pop("preset")
        if base not in preset_names():
            raise ConfigError(f"{path}: preset: '{base}' is not a preset ({', '.join(preset_names())})")
        return OmegaConf.merge(_read_yaml(base), loaded)
    return loaded


def _valid_keys(node: Any, prefix: str) -> list[str]:
    """Dotted names of the fields of the dataclass section at `prefix` (for error messages)."""
    cls = Config
    for part in [p for p in prefix.split(".") if p]:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields or not dataclasses.is_dataclass(fields[part].default_factory()):
            return []
        cls = type(fields[part].default_factory())
    return [f"{prefix + '.' if prefix else ''}{f.name}" for f in dataclasses.fields(cls)]


def _explain(err: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    msg = getattr(err, "msg", str(err)).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        valid = _valid_keys(None, parent)
        return ConfigError(
            f"{source}: unknown config key '{key}'. Valid keys here: {', '.join(valid)}"
        )
    return ConfigError(f"{source}: bad value for '{key}': {msg}")


def _check_values(cfg: Config) -> None:
    for dotted, allowed in _CHOICES.items():
        value = OmegaConf.select(cfg, dotted)
        if value not in allowed:
            raise ConfigError(f"{dotted}={value!r} is not one of {', '.join(allowed)}")
    positive = ["rollout.n", "rollout.num_workers", "learner.num_ranks", "learner.prompts_per_step",
                "rollout.max_tokens_per_turn", "rollout.max_response_tokens", "model.max_pixels",
                "queue.capacity_groups", "learner.micro_batch_tokens", "eval.n", "curate.k"]
    for dotted in positive:
        if OmegaConf.select(cfg, dotted) <= 0:
            raise ConfigError(f"{dotted} must be > 0, got {OmegaConf.select(cfg, dotted)}")
    for dotted in ["queue.max_staleness", "rollout.max_tool_calls", "run.total_steps",
                   "eval.temperature", "curate.crop_context"]:
        if OmegaConf.select(cfg, dotted) < 0:
            raise ConfigError(f"{dotted} must be >= 0, got {OmegaConf.select(cfg, dotted)}")
    learner = cfg.learner
    if learner.updates_per_step <= 0 or learner.lr <= 0 or learner.grad_clip <= 0 or learner.kl_coef < 0:
        raise ConfigError("learner.updates_per_step, learner.lr and learner.grad_clip must be > 0, "
                          "learner.kl_coef >= 0")
    if not (0 <= learner.clip_ratio_low < 1 and learner.clip_ratio_high >= 0):
        raise ConfigError("learner.clip_ratio_low must be in [0, 1) and learner.clip_ratio_high >= 0")
    if learner.dual_clip != 0 and learner.dual_clip <= 1:
        raise ConfigError(f"learner.dual_clip must be 0 (off) or > 1, got {learner.dual_clip}")
    in_flight = cfg.learner.prompts_per_step * (cfg.queue.max_staleness + 1)
    if cfg.queue.capacity_groups < in_flight:
        raise ConfigError(f"queue.capacity_groups={cfg.queue.capacity_groups} cannot hold the groups the "
                          f"staleness bound lets the driver request ({in_flight} = "
                          "learner.prompts_per_step * (queue.max_staleness + 1))")
    if cfg.model.min_pixels > cfg.model.max_pixels:
        raise ConfigError("model.min_pixels must not exceed model.max_pixels")
    if cfg.rollout.max_tokens_per_turn > cfg.rollout.max_response_tokens:
        raise ConfigError("rollout.max_tokens_per_turn must not exceed rollout.max_response_tokens")
    if "default" not in cfg.reward.weights:
        raise ConfigError("reward.weights must have a 'default' entry")
    unknown_tools = set(cfg.tools.enabled) - {"image_zoom_in_tool", "image_rotate_tool"}
    if unknown_tools:
        raise ConfigError(f"tools.enabled: unknown tools {sorted(unknown_tools)}")


def load_config(preset_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- preset or YAML file <- dotted `key=value` overrides, validated.

    Returns a typed OmegaConf object that reads like a `Config` (attribute access, typed fields).
    """
    source = preset_or_path or DEFAULT_PRESET
    cfg = OmegaConf.structured(Config)
    try:
        cfg = OmegaConf.merge(cfg, _read_yaml(source))
    except OmegaConfBaseException as err:
        raise _explain(err, source) from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. rollout.n=8)")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise _explain(err, f"override '{item}'") from None
    _check_values(cfg)
    return cfg  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what `zoomrl config show` prints and runs save)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config; `load_config(path)` reads it back to the same values."""
    Path(path).write_text(to_yaml(cfg))
