"""The one config system: OmegaConf structured dataclasses, YAML presets, dotted overrides.

Defaults live only here, as dataclass field defaults, and follow the DeepEyes reference recipe
where it states a value. Presets (`core/presets/*.yaml`) change what a machine size needs;
`tiny-cpu` is the preset used when none is named. Load order: defaults <- preset <- overrides; a YAML
file may start from a preset with a top-level `preset: NAME` key (the cluster configs in deploy/ do).
Each field's domain is declared on the field: a `Literal[...]` of the allowed strings, or an
`Annotated[type, Range(...)]` of the allowed numbers; every float must be finite. Rules that tie
two fields together are a short list in `_cross_field_errors`. An unknown key (with close
matches), a wrong type, an invalid value or malformed YAML raises a one-line `ConfigError` naming
the key, the value and what is allowed (the file and line for YAML).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import operator
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

DEFAULT_PRESET = "tiny-cpu"


class ConfigError(ValueError):
    """A config key, type or value is wrong; the message says which and what is allowed."""


@dataclass(frozen=True)
class Range:
    """The numbers a config field allows, declared on it: `n: Annotated[int, Range(ge=1)]`.

    Bounds are named as in annotated-types: ge (>=), gt (>), le (<=), lt (<). `off` is one more
    value outside them that switches the feature off (learner.dual_clip: 0).
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    off: float | None = None

    def allows(self, value: float) -> bool:
        """Whether `value` lies in the range (or is the `off` value)."""
        return value == self.off or all(bound is None or holds(value, bound) for holds, bound in (
            (operator.ge, self.ge), (operator.gt, self.gt), (operator.le, self.le), (operator.lt, self.lt)))

    def __str__(self) -> str:
        """The range as a message says it: '> 0 and <= 1', '0 (off) or > 1'."""
        bounds = " and ".join(f"{sign} {bound}" for sign, bound in (
            (">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)) if bound is not None)
        return bounds if self.off is None else f"{self.off} (off) or {bounds}"


Count = Annotated[int, Range(ge=1)]  # how many of something: at least one
Seed = Annotated[int, Range(ge=0, lt=2**32)]  # numpy's seed range (vLLM seeds numpy with run.seed)
Port = Annotated[int, Range(ge=0, le=65535)]  # a TCP port; 0 = any free port


@dataclass
class TinyModelConfig:
    """Dimensions of the tiny random-weight Qwen2.5-VL built locally when `model.path` is 'tiny'."""

    hidden_size: Count = 128
    """Text decoder width."""
    intermediate_size: Count = 256
    """Text MLP width."""
    num_hidden_layers: Count = 2
    """Text decoder layers."""
    num_attention_heads: Count = 2
    """Query heads (head_dim = hidden_size / heads = 64, a size vLLM's CPU attention supports)."""
    num_key_value_heads: Count = 1
    """KV heads (grouped-query attention)."""
    vision_depth: Count = 2
    """Vision transformer blocks."""
    vision_hidden_size: Count = 64
    """Vision transformer width."""
    vision_intermediate_size: Count = 128
    """Vision MLP width."""
    vision_num_heads: Count = 2
    """Vision attention heads."""
    vocab_size: Count = 512
    """Target size of the locally trained byte-level BPE vocabulary (special tokens included)."""
    rope_theta: Annotated[float, Range(gt=1)] = 1_000_000.0
    """Base of the text decoder's rotary frequencies (Qwen2.5-VL's 1e6 by default). Multimodal RoPE
    gives an image token's row and column the lower frequencies: at 1e6 a column moves the
    fastest of them by 2e-4 radians. A pointing probe of the tiny base wrote a valid zoom call 12
    times in 64 at 1e6 and 58 at 20, on an object no more often than chance at either
    (zoomrl/tiny_base.py)."""
    seed: Seed = 0
    """Seed of the random weights."""


@dataclass
class TinyBaseConfig:
    """The pretrained tiny base built when `model.path` is 'tiny-base' (recipe: zoomrl/tiny_base.py).

    Defaults: the full base (2.0M parameters, three stages, 1012 s on the shared 2-core machine;
    measured in tiny_base's docstring); the preset deepeyes-mini-ci shrinks it to a CI-size base
    by the same recipe."""

    dims: TinyModelConfig = field(default_factory=lambda: TinyModelConfig(
        hidden_size=192, intermediate_size=512, num_hidden_layers=3, num_attention_heads=3,
        num_key_value_heads=1, vision_depth=3, vision_hidden_size=96,
        vision_intermediate_size=256, vision_num_heads=2, vocab_size=1024))
    """Model dimensions (and the seed of its initial weights)."""
    images: Count = 320
    """Synthetic images the supervised data is drawn from (split 'base', never train or test)."""
    steps: Count = 1100
    """Optimizer steps in all (the stages below first, then the full mix)."""
    caption_steps: Annotated[int, Range(ge=0)] = 300
    """First stage: steps of captions only (perception before anything else)."""
    pointing_steps: Annotated[int, Range(ge=0)] = 300
    """Second stage: steps of captions and pointings (grounding), before the trajectories join."""
    captions_per_step: Annotated[int, Range(ge=0)] = 16
    """Crop-caption sequences per step (the perception stage, short sequences)."""
    pointings_per_step: Annotated[int, Range(ge=0)] = 12
    """Zoom-on-an-object sequences per step (the grounding stage, short sequences)."""
    trajectories_per_step: Annotated[int, Range(ge=0)] = 4
    """DeepEyes-format trajectories per step (the format: long, with the tool-use system prompt)."""
    lr: Annotated[float, Range(gt=0)] = 1e-3
    """Peak AdamW learning rate: linear warm-up over the first 5% of steps, the peak through the
    caption and pointing stages, cosine decay to 0 over the last stage."""
    seed: Seed = 0
    """Seed of the data draw and the batch order."""


@dataclass
class ModelConfig:
    """Which policy to train and how images become tokens."""

    path: str = "tiny"
    """A Hugging Face folder or hub id of a Qwen2.5-VL model, 'tiny' for the locally built random
    one, or 'tiny-base' for the locally pretrained one (zoomrl/tiny_base.py)."""
    cache_dir: str = "~/.cache/zoomrl"
    """Where the tiny model and the synthetic data are built and cached."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype for the rollout engine and published weights."""
    min_pixels: Count = 4 * 28 * 28
    """Smallest pixel count an image (or crop) is resized up to (Qwen2.5-VL smart resize)."""
    max_pixels: Count = 256 * 28 * 28
    """Largest pixel count an image (or crop) is resized down to; sets the image token budget
    (one token per 28x28 merged patch: 200704 px = 448x448 = 256 tokens)."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Dimensions used when path is 'tiny'."""
    base: TinyBaseConfig = field(default_factory=TinyBaseConfig)
    """Dimensions and recipe used when path is 'tiny-base' (zoomrl/tiny_base.py)."""


@dataclass
class SynthConfig:
    """The synthetic V*-like visual-search set used when no data files are given."""

    n_train: Count = 256
    """Training rows."""
    n_test: Count = 64
    """Test rows (the default evaluation set)."""
    image_size: Annotated[int, Range(ge=512)] = 2048
    """Side of the square synthetic images, in pixels. Below 512 the targets and distractors
    (24-40 px, kept apart by their own size and off the border) often find no free place."""
    seed: Seed = 0
    """Seed of the generator; the same seed gives the same files."""
    kinds: list[Literal["colour", "shape", "position", "checks"]] = field(
        default_factory=lambda: ["colour", "shape", "position"])
    """Question kinds drawn from: colour (of the only shape of a kind), shape (of the only object
    of a colour), position (of one target relative to another), checks (the two colours of the
    checkered core of the only object of a colour: every object of its images has one, 48 or 64 px;
    the pairs average to one grey in a shrunk view, core/synth.py)."""
    clutter: Annotated[float, Range(ge=0)] = 1.0
    """Distractors relative to the default density (1 = 30-60 on a 2048 px image, as many per
    area on others); at least 4 are drawn whatever the value."""
    grid: Annotated[int, Range(ge=0)] = 0
    """0: objects anywhere; N: each object centred in its own cell of an N x N grid (the tiny
    base's zoom boxes are the cells, zoomrl/tiny_base.py). Needs N x N >= the objects drawn."""


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
    seed: Seed = 0
    """Seed of the prompt order."""
    max_decoded_pixels: Count = 100_000_000
    """Images decoding to more pixels than this are refused (decompression-bomb guard)."""


@dataclass
class EngineConfig:
    """The vLLM engine inside each rollout actor."""

    tensor_parallel_size: Count = 1
    """GPUs per engine (vLLM tensor parallelism)."""
    gpu_memory_utilization: Annotated[float, Range(gt=0, le=1)] = 0.8
    """Fraction of GPU memory vLLM may take (GPU only)."""
    cpu_kvcache_space_gib: Count = 2
    """KV-cache size on CPU (VLLM_CPU_KVCACHE_SPACE), so several engines fit in RAM."""
    max_model_len: Count = 32768
    """Longest sequence (prompt + all turns) the engine accepts."""
    enable_prefix_caching: bool = True
    """Reuse KV of shared prefixes (the group's common prompt, earlier turns)."""
    enforce_eager: bool = False
    """Disable CUDA graphs / compilation (faster start, slower decode)."""
    logits_processors: list[str] = field(default_factory=list)
    """Extra vLLM logits processor classes loaded into the engine, as 'module:Class' (e.g.
    'actors.forcing:ForcedTurnsLogitsProcessor', which scripts assistant turns for demos and tests)."""
    cpu_cores: list[str] = field(default_factory=list)
    """vLLM's CPU engine only: the cores each rollout actor's engine computes on, one entry per
    actor (VLLM_CPU_OMP_THREADS_BIND: '0', '2-3', '0,2'), handed out in turn as actors start, an
    entry shared only when there are more actors than entries. Empty: vLLM's own binding, which
    puts every engine of one NUMA node on the same cores (two engines on this 2-core machine both
    computed on core 0)."""
    weights_dir: str = ""
    """Folder of the shared buffer new weights are written into for vLLM's worker to load ('' =
    /dev/shm, memory, else the system temp folder); the file is unlinked after the first load and
    the buffer (one copy of the model per engine) kept mapped. See actors/engine.py."""


PromptStyle = Literal["deepeyes"]
"""Conversation formats actors/prompt.py renders (one so far: the released DeepEyes format)."""


@dataclass
class RolloutConfig:
    """Rollout actors and the iMCoT multi-turn loop."""

    num_workers: Count = 1
    """Rollout actors (one vLLM engine each); can be changed while a run goes."""
    num_cpus_per_worker: Annotated[float, Range(ge=0)] = 1.0
    """Ray CPUs reserved by each rollout actor."""
    num_gpus_per_worker: Annotated[float, Range(ge=0)] = 0.0
    """Ray GPUs reserved by each rollout actor (= engine.tensor_parallel_size on GPU)."""
    n: Count = 16
    """Rollouts per prompt (the GRPO group size)."""
    temperature: Annotated[float, Range(gt=0)] = 1.0
    """Sampling temperature."""
    top_p: Annotated[float, Range(gt=0, le=1)] = 1.0
    """Nucleus sampling threshold; below 1 only with learner.ratio_against=recompute (the
    behaviour log-probs vLLM returns then differ from the learner's, see learner/README.md)."""
    max_tool_calls: Annotated[int, Range(ge=0)] = 6
    """Tool calls allowed in one trajectory (paper 6; released 7B script 4)."""
    max_response_tokens: Count = 20480
    """Tokens the policy may generate over all turns of one trajectory."""
    max_tokens_per_turn: Count = 10240
    """Tokens the policy may generate in one assistant turn."""
    max_images: Count = 32
    """Images (original + crops) allowed in one trajectory."""
    prompt_style: PromptStyle = "deepeyes"
    """Conversation format; 'deepeyes' matches the released DeepEyes checkpoint."""
    seed: Seed | None = None
    """Sampling seed: each turn of each trajectory gets a seed derived from it, the group id and
    the trajectory index, so a rollout can be replayed exactly; None draws fresh randomness."""
    sampling_extra_args: dict[str, Any] = field(default_factory=dict)
    """Passed to every engine request as vLLM's SamplingParams.extra_args, where custom logits
    processors read it (e.g. forced_turns: [text, ...] for the forcing processor)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """vLLM engine settings."""


ToolName = Literal["image_zoom_in_tool", "image_rotate_tool"]
"""The tools of the registry (tools/registry.py registers a `Tool` under each of these names; a
test holds the two equal). Named here because the config, the ground floor, imports no tool."""


@dataclass
class ToolsConfig:
    """The image tools the policy may call."""

    enabled: list[ToolName] = field(default_factory=lambda: ["image_zoom_in_tool"])
    """Tool names offered to the policy in the system prompt. DeepEyes
    trains with zoom-in only; its rotate tool is offered zero-shot at inference, e.g.
    `zoomrl eval ... tools.enabled=[image_zoom_in_tool,image_rotate_tool]`."""
    min_box_side: Count = 28
    """A zoom box's short side (in original-image pixels) must be at least this (one merged patch)."""
    max_aspect_ratio: Annotated[float, Range(ge=1)] = 100.0
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
    timeout_s: Annotated[float, Range(gt=0)] = 30.0
    """Seconds one request may wait on the connection (to connect, and for each read); a request
    that times out counts as a failed attempt and is retried."""
    max_retries: Annotated[int, Range(ge=0)] = 4
    """Retries with exponential backoff before the reward task fails loudly."""
    backoff_s: Annotated[float, Range(ge=0)] = 1.0
    """Wait before the first retry; each later retry waits twice as long (times a random 0.5-1
    jitter, so many reward tasks do not retry in lockstep)."""
    max_concurrency: Count = 16
    """Requests in flight at once from one process (a reward task's worker)."""
    cache_size: Annotated[int, Range(ge=0)] = 65536
    """Verdicts kept per process, keyed by (question, answer, prediction): a group of n rollouts
    often repeats one prediction, which is then asked once."""
    group_retries: Annotated[int, Range(ge=0)] = 5
    """Times the driver requests a group again after its reward task failed on the judge (every
    retry above spent), before it ends the run with a checkpoint: an outage this long is not a
    blip. Counted in the metric judge_reissued_groups."""
    group_backoff_s: Annotated[float, Range(ge=0)] = 30.0
    """Wait before a group is requested again; each later re-request of it waits twice as long."""


Gating = Literal["conditional", "unconditional", "none"]
"""When the tool bonus is paid (rewards/score.py)."""


@dataclass
class RewardConfig:
    """The DeepEyes reward: R = R_acc + R_format + 1[R_acc > 0] * R_tool (gating selectable)."""

    gating: Gating = "conditional"
    """Tool bonus gating: conditional (only when correct) | unconditional | none."""
    weights: dict[str, RewardWeights] = field(
        default_factory=lambda: {
            "default": RewardWeights(),
            "thinklite_eureka": RewardWeights(acc=1.2, format=0.4, tool=0.0),
        }
    )
    """Weights per data_source; 'default' applies to every source not listed."""
    max_answer_chars: Count = 1000
    """Answers this long or longer get format -1 and accuracy 0 (anti-hacking)."""
    bonus_tools: list[ToolName] = field(default_factory=lambda: ["image_zoom_in_tool"])
    """Tools whose successful calls earn the tool bonus. DeepEyes rewards
    active perception, a crop; rotate is its zero-shot inference tool and earns none."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The optional LLM judge."""


LossAggregation = Literal["token-mean", "seq-mean-token-mean"]
"""How the per-token GRPO loss becomes one number (learner/grpo.py)."""


@dataclass
class LearnerConfig:
    """The FSDP2 learner group and the GRPO update."""

    num_ranks: Count = 8
    """Learner ranks (Ray actors in one torch.distributed group)."""
    num_cpus_per_rank: Annotated[float, Range(ge=0)] = 1.0
    """Ray CPUs per rank."""
    num_gpus_per_rank: Annotated[float, Range(ge=0)] = 1.0
    """Ray GPUs per rank (0 = CPU with gloo)."""
    prompts_per_step: Count = 256
    """Groups (prompts) per policy update; the batch is prompts_per_step * rollout.n trajectories."""
    lr: Annotated[float, Range(gt=0)] = 1e-6
    """AdamW learning rate (constant)."""
    weight_decay: Annotated[float, Range(ge=0)] = 0.01
    """AdamW weight decay."""
    grad_clip: Annotated[float, Range(gt=0)] = 1.0
    """Max global gradient norm."""
    clip_ratio_low: Annotated[float, Range(ge=0, lt=1)] = 0.2
    """PPO clip: ratio >= 1 - clip_ratio_low."""
    clip_ratio_high: Annotated[float, Range(ge=0)] = 0.2
    """PPO clip: ratio <= 1 + clip_ratio_high."""
    dual_clip: Annotated[float, Range(gt=1, off=0)] = 3.0
    """Dual-clip bound for negative advantages (0 disables)."""
    loss_agg: LossAggregation = "token-mean"
    """Loss aggregation: over all tokens, or per trajectory then over trajectories."""
    kl_coef: Annotated[float, Range(ge=0)] = 0.0
    """KL penalty to a reference model (k3); 0 means no reference model is built."""
    norm_adv_by_std: bool = True
    """Divide group advantages by the group's reward std (GRPO); False keeps mean-centering only."""
    filter_zero_adv_groups: bool = False
    """Drop groups whose rewards are all equal (their advantages are all zero)."""
    ratio_against: Literal["behavior", "recompute"] = "behavior"
    """Importance ratio against: behavior (rollout logprobs) | recompute (learner, before update)."""
    micro_batch_tokens: Count = 16384
    """Token budget of one micro-batch (gradient accumulation to the global batch)."""
    mixed_precision: bool = True
    """bf16 compute with fp32 master weights on GPU; CPU always runs fp32."""
    activation_checkpointing: bool = True
    """Recompute activations in backward to save memory."""
    offload: bool = False
    """Keep parameter shards, gradients and AdamW state in (pinned) CPU memory, copied to the GPU
    unit by unit for compute (FSDP2's CPUOffloadPolicy); the optimizer steps on CPU. Frees the GPU
    of all but one unit's weights at a time, for models whose state does not fit; GPU ranks only."""
    updates_per_step: Count = 1
    """Optimizer steps per policy version: the batch's groups split into this many mini-batches
    (1 = the reference recipe, one update per rollout batch)."""
    compute_entropy: bool = True
    """Report the policy's mean token entropy (costs one softmax over the vocabulary per token)."""


@dataclass
class WeightSyncConfig:
    """How new weights reach the rollout engines."""

    method: Literal["object_store", "nccl", "gloo"] = "object_store"
    """object_store (each learner rank's rows through the object store into a shared buffer each
    engine loads from, learner/weights.py) | nccl (learner rank 0 broadcasts the policy to every
    engine's workers, zoomrl/broadcast_sync.py: GPU clusters) | gloo (the same broadcast over
    gloo: its CPU twin, which CI runs). A broadcast updates every engine at once and holds the
    driver until all have drained their groups; the object store lets each engine load when idle
    (docs/cluster.md)."""
    bucket_mib: Count = 256
    """nccl / gloo: size of one broadcast bucket (the extra memory the sync needs on each side)."""
    timeout_s: Annotated[float, Range(gt=0)] = 600.0
    """nccl / gloo: longest wait for a member of the weight-sync group (its arrival, each gloo
    broadcast); the error names the members that did not come."""


@dataclass
class QueueConfig:
    """The replay queue between rollout actors and the learner."""

    capacity_groups: Count = 512
    """Most scored groups held at once; producers wait when full."""
    max_staleness: Annotated[int, Range(ge=0)] = 1
    """Groups from policies more than this many versions old are dropped; 0 = synchronous."""


@dataclass
class RunConfig:
    """The run itself: length, seeds, outputs."""

    name: str = "zoomrl"
    """Run name; the run directory is runs_dir/name-<timestamp>."""
    runs_dir: str = "runs"
    """Parent folder of run directories."""
    total_steps: Annotated[int, Range(ge=0)] = 80
    """Policy updates to run (the paper trains about 80 steps)."""
    seed: Seed = 0
    """Global seed."""
    forward_actor_logs: bool = False
    """Print what the Ray actors print (vLLM engine logs, learner warnings, tracebacks) in this
    process's output, each line prefixed with the actor and its pid (Ray's `log_to_driver`), so a
    Ray job's `ray job logs` holds them; Ray folds lines repeated across actors into one. Off by
    default: vLLM says ~50 lines per engine start and a few per weight update (95 of the 115 lines
    of a 2-step tiny-cpu run), which bury the run's own. Either way every actor's output is in
    Ray's log folder (/tmp/ray/session_latest/logs/worker-*.out on each node) and the dashboard."""
    checkpoint_every: Annotated[int, Range(ge=0)] = 10
    """Save a checkpoint every this many steps (0 = only at the end)."""
    keep_checkpoints: Annotated[int, Range(ge=0)] = 0
    """Complete checkpoints kept in the run directory: once a new one is complete, all but the
    newest this many are removed (0 = keep all). The one just written and the newest loadable one
    always stay; folders that are not complete checkpoints are never touched. A 7B checkpoint
    with AdamW state is about 100 GB (docs/cluster.md)."""
    eval_every: Annotated[int, Range(ge=0)] = 0
    """Validate every this many steps (0 = never): the rollout actors, holding the step's weights,
    answer the questions of eval_files the way `zoomrl eval` does (eval.n at eval.temperature,
    options shuffled); figures go to every sink as val/... (docs/metrics.md), trajectories to
    val/step-<k>.trajectories.jsonl in the run directory. Never trained on."""
    eval_files: list[str] = field(default_factory=list)
    """Held-out files to validate on (formats of `zoomrl eval`); empty means data.test_files, else
    the synthetic test split (rows drawn apart from the train split's)."""
    eval_max_questions: Annotated[int, Range(ge=0)] = 0
    """Validate on the first this many questions of eval_files (0 = all of them)."""


Tracker = Literal["tensorboard", "wandb"]
"""Experiment trackers a run can log to (zoomrl/trackers.py), besides metrics.jsonl and the Prometheus
endpoint, which every run writes and serves."""


@dataclass
class WandbConfig:
    """The Weights & Biases run, when metrics.trackers has wandb. With WANDB_MODE=offline it is
    written to the run directory's wandb/ folder for a later `wandb sync`."""

    project: str = "zoomrl"
    """W&B project."""
    entity: str = ""
    """W&B team or user; '' = the logged-in account's default entity."""
    name: str = ""
    """Display name of the W&B run; '' = the run directory's name."""
    tags: list[str] = field(default_factory=list)
    """Tags of the W&B run (e.g. [lr-sweep, 7b])."""


@dataclass
class MetricsConfig:
    """Where metrics go: Ray metrics in every actor; from the driver, each step's figures to
    metrics.jsonl, the Prometheus endpoint and the experiment trackers."""

    host: str = "127.0.0.1"
    """Interface of the driver's Prometheus endpoint."""
    port: Port = 0
    """Port of the driver's Prometheus endpoint; 0 = a free port, printed at start (so runs that
    share a machine never collide). A port given here that is taken ends the start with an error."""
    sample_trajectories: Annotated[int, Range(ge=0)] = 4
    """Trajectories written to the run directory per step, for viewing."""
    trackers: list[Tracker] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers that get every per-step figure: tensorboard writes event files into the
    run directory (`tensorboard --logdir runs`); wandb logs to W&B (metrics.wandb; needs `pip install
    'zoomrl[wandb]'`), with the resolved config and a table of the sample trajectories. [] = only
    metrics.jsonl and the Prometheus endpoint."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """The W&B run, used when trackers has wandb."""


@dataclass
class EvalConfig:
    """`zoomrl eval`: how evaluation questions are asked and answered."""

    n: Count = 1
    """Trajectories per question (replaces rollout.n). Accuracy is over all trajectories; its
    Wilson interval treats them as independent draws, which is exact only for n = 1."""
    temperature: Annotated[float, Range(ge=0)] = 0.0
    """Sampling temperature at evaluation (replaces rollout.temperature); 0 = greedy."""
    shuffle_options: bool = True
    """Put each multiple-choice question's options in a fixed random order (the reference release
    once put every answer at A); False keeps them as given."""
    shuffle_seed: Seed = 0
    """Seed of the option orders: a question's order depends only on this seed and its id."""


@dataclass
class CurateConfig:
    """`zoomrl curate`: the three-stage filter of training data (DeepEyes' data curation)."""

    k: Count = 8
    """Answers sampled per item (at rollout.temperature; replaces rollout.n) to measure how often
    the model solves it, with the full image and with the ground-truth crop."""
    crop_context: Annotated[float, Range(ge=0)] = 0.5
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


def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("core.presets").iterdir()
                  if p.name.endswith(".yaml"))


def _read_yaml(preset_or_path: str) -> DictConfig:
    if preset_or_path in preset_names():
        text = resources.files("core.presets").joinpath(f"{preset_or_path}.yaml").read_text()
        return OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    path = Path(preset_or_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"config '{preset_or_path}' is neither a preset ({', '.join(preset_names())}) "
            "nor a YAML file"
        )
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({_yaml_problem(err)})") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: a config file must hold a mapping at the top level")
    if "preset" in loaded:  # a file that starts from a preset and changes a few keys (deploy/configs)
        base = loaded.pop("preset")
        if base not in preset_names():
            raise ConfigError(f"{path}: preset: '{base}' is not a preset ({', '.join(preset_names())})")
        return OmegaConf.merge(_read_yaml(base), loaded)
    return loaded


def _yaml_problem(err: yaml.YAMLError) -> str:
    """What PyYAML found wrong, on one line: "did not find expected ',' or ']', while parsing a
    flow sequence from line 3"."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context, mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    return f"{problem}, {context} from line {mark.line + 1}" if context and mark else problem


@functools.cache
def _field_hints(section: type) -> dict[str, Any]:
    """Field name -> annotation of a config dataclass, with the domain (Literal, Range) kept."""
    return typing.get_type_hints(section, include_extras=True)


def _hint_at(dotted: str) -> Any:
    """The annotation at a dotted key ('' = Config), stepping over the keys of dict-valued fields
    (reward.weights.<data_source>); None where the dataclasses declare no such key."""
    hint: Any = Config
    for part in [p for p in dotted.split(".") if p]:
        if typing.get_origin(hint) is dict:
            hint = typing.get_args(hint)[1]  # `part` is one of the dict's own keys
        elif dataclasses.is_dataclass(hint) and part in _field_hints(hint):
            hint = _field_hints(hint)[part]
        else:
            return None
    return hint


def _keys_under(prefix: str, deep: bool = False) -> list[str]:
    """Dotted keys of the section at `prefix` (all nested ones too when `deep`)."""
    section = _hint_at(prefix)
    if not dataclasses.is_dataclass(section):
        return []
    keys = [f"{prefix}.{name}" if prefix else name for name in _field_hints(section)]
    return keys + [k for key in keys for k in _keys_under(key, deep)] if deep else keys


def _without_none(hint: Any) -> Any:
    """The annotation of an Optional field without its None (`Seed | None` -> `Seed`)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def allowed_values(hint: Any) -> str | None:
    """The domain declared on a field annotated `hint`, as messages say it ('one of a, b',
    '> 0 and <= 1'), or None when its type is all there is."""
    hint = _without_none(hint)
    if typing.get_origin(hint) is Literal:
        return f"one of {', '.join(map(str, typing.get_args(hint)))}"
    if typing.get_origin(hint) is list and typing.get_origin(typing.get_args(hint)[0]) is Literal:
        return f"each {allowed_values(typing.get_args(hint)[0])}"
    ranges = [bound for bound in getattr(hint, "__metadata__", ()) if isinstance(bound, Range)]
    return str(ranges[0]) if ranges else None


def _domain_problem(hint: Any, value: Any) -> str | None:
    """What is wrong with `value` for a field annotated `hint` ('must be > 0'), or None."""
    if value is None:  # OmegaConf already refused None where the field is not Optional
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    hint = _without_none(hint)
    outside = (typing.get_origin(hint) is Literal and value not in typing.get_args(hint)
               or any(isinstance(bound, Range) and not bound.allows(value)
                      for bound in getattr(hint, "__metadata__", ())))
    return f"must be {allowed_values(hint)}" if outside else None


def field_problem(key: str, value: Any) -> str | None:
    """What is wrong with `value` for the config field at the dotted `key` ('must be >= 1'), or
    None: the check `load_config` runs, for arguments that stand for a config field."""
    return _domain_problem(_hint_at(key), value)


def unknown_key_help(key: str) -> str:
    """What follows "unknown config key 'KEY'" in a message: close matches among the config's
    keys, and the valid keys of its section ('; did you mean a or b? Valid keys here: ...')."""
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    known = dict.fromkeys(_keys_under("", deep=True) + _keys_under(parent))  # ordered, no repeats
    close = difflib.get_close_matches(key, known, n=3)
    suggestion = f"; did you mean {' or '.join(close)}?" if close else ""
    valid = _keys_under(parent)
    here = f" Valid keys here: {', '.join(valid)}" if valid else ""
    return suggestion + here


def _explain(err: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    msg = getattr(err, "msg", str(err)).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        return ConfigError(f"{source}: unknown config key '{key}'{unknown_key_help(key)}")
    hint = _hint_at(key)
    if typing.get_origin(hint) is Literal:
        return ConfigError(f"{source}: {key}={err.value!r}: {_domain_problem(hint, err.value)}")
    return ConfigError(f"{source}: bad value for '{key}': {msg}")


def _domain_errors(node: Any, section: type, prefix: str = "") -> list[str]:
    """Every field of `node` (and of its sections) checked against the domain on its annotation."""
    errors = []
    for name, hint in _field_hints(section).items():
        key, value = f"{prefix}{name}", node[name]
        if dataclasses.is_dataclass(hint):
            errors += _domain_errors(value, hint, f"{key}.")
        elif typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
            for entry, item in value.items():
                errors += _domain_errors(item, typing.get_args(hint)[1], f"{key}.{entry}.")
        elif problem := _domain_problem(hint, value):
            errors.append(f"{key}={value!r}: {problem}")
    return errors


def _cross_field_errors(cfg: Config) -> list[str]:
    """The rules that tie fields together (each field's own domain is on its annotation)."""
    rollout, learner = cfg.rollout, cfg.learner
    in_flight = learner.prompts_per_step * (cfg.queue.max_staleness + 1)
    off_policy = ("so the behaviour log-probs vLLM returns are not those of the learner's full-vocabulary "
                  "softmax and the importance ratio is off (learner/README.md); use learner.ratio_against="
                  "recompute")
    rules = [
        (cfg.queue.capacity_groups >= in_flight,
         f"queue.capacity_groups={cfg.queue.capacity_groups} cannot hold the groups the staleness bound "
         f"lets the driver request ({in_flight} = learner.prompts_per_step * (queue.max_staleness + 1))"),
        (cfg.model.min_pixels <= cfg.model.max_pixels,
         f"model.min_pixels={cfg.model.min_pixels} must not exceed model.max_pixels={cfg.model.max_pixels}"),
        (rollout.max_tokens_per_turn <= rollout.max_response_tokens,
         f"rollout.max_tokens_per_turn={rollout.max_tokens_per_turn} must not exceed "
         f"rollout.max_response_tokens={rollout.max_response_tokens}"),
        ("default" in cfg.reward.weights, "reward.weights must have a 'default' entry"),
        (not learner.offload or learner.num_gpus_per_rank > 0,
         "learner.offload=true moves parameters and optimizer state from the GPU to CPU memory, but "
         "learner.num_gpus_per_rank=0 runs the learner on CPU already; set learner.offload=false"),
        (rollout.top_p == 1 or learner.ratio_against == "recompute",
         f"rollout.top_p={rollout.top_p} needs learner.ratio_against=recompute: top-p samples from the "
         f"nucleus only, {off_policy}, or rollout.top_p=1"),
        (not rollout.engine.logits_processors or rollout.temperature == 1
         or learner.ratio_against == "recompute",
         f"rollout.engine.logits_processors at rollout.temperature={rollout.temperature} needs "
         f"learner.ratio_against=recompute: away from temperature 1 the engine returns log-probs after "
         f"the processors, {off_policy}, or rollout.temperature=1"),
    ]
    return [message for holds, message in rules if not holds]


def _check_values(cfg: Config) -> None:
    """Refuse the loaded config if a field is outside its domain or a rule between fields fails,
    naming every such key at once."""
    errors = _domain_errors(cfg, Config) or _cross_field_errors(cfg)
    if errors:
        raise ConfigError("; ".join(errors))


SINGLE_PATH_KEYS = ("data.train_files", "data.test_files", "run.eval_files")
"""List fields that also take one path as a plain string (`data.train_files=foo.parquet`)."""


def _paths_as_lists(node: DictConfig) -> DictConfig:
    """`node` with a plain string at a SINGLE_PATH_KEYS key made a one-item list."""
    for dotted in SINGLE_PATH_KEYS:
        value = OmegaConf.select(node, dotted)
        if isinstance(value, str):
            OmegaConf.update(node, dotted, [value] if value else [], merge=False)
    return node


def load_config(preset_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- preset or YAML file <- dotted `key=value` overrides, validated.

    Returns a typed OmegaConf object that reads like a `Config` (attribute access, typed fields).
    """
    source = preset_or_path or DEFAULT_PRESET
    cfg = OmegaConf.structured(Config)
    try:
        cfg = OmegaConf.merge(cfg, _paths_as_lists(_read_yaml(source)))
    except OmegaConfBaseException as err:
        raise _explain(err, source) from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. rollout.n=8)")
        try:
            cfg = OmegaConf.merge(cfg, _paths_as_lists(OmegaConf.from_dotlist([item])))
        except OmegaConfBaseException as err:
            raise _explain(err, f"override '{item}'") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': the value is not valid YAML "
                              f"({_yaml_problem(err)})") from None
    try:
        _check_values(cfg)
    except OmegaConfBaseException as err:  # e.g. an interpolation ${...} naming no key
        raise _explain(err, "config") from None
    return cfg  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what `zoomrl config show` prints and runs save)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config; `load_config(path)` reads it back to the same values."""
    Path(path).write_text(to_yaml(cfg))
