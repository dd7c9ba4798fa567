"""Records passed between the parts: a prompt `Sample`, a rollout `Trajectory`, a scored `Group`.

Arrays are numpy so they travel through Ray's object store without copies on a node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Sample:
    """One prompt row (the DeepEyes release format, read by `core.data`)."""

    id: str
    """'<file stem>:<row>' for file data; stable across runs."""
    data_source: str
    """vstar | chart | thinklite_eureka | synth_vstar | ... (selects the reward weights)."""
    messages: list[dict[str, str]]
    """[{role, content}]; each '<image>' in a content string marks where an image goes."""
    images: list[bytes]
    """Encoded images (PNG/JPEG) at original resolution, in '<image>' order."""
    question: str
    """The question alone (without options or instructions)."""
    answer: str
    """Ground truth: an option letter for multiple choice, else the answer text."""
    choices: list[str] = field(default_factory=list)
    """Option texts for A, B, C, ...; empty when the question is open-ended."""
    gt_boxes: list[list[float]] = field(default_factory=list)
    """Ground-truth boxes [x1, y1, x2, y2] in original-image pixels (for grounding IoU)."""
    env_name: str = ""
    """Tool environment of the release ('' = no tool)."""
    ability: str = ""
    """Release's ability tag."""
    reward_style: str = "rule"
    """reward_model.style of the release (rule | model)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other extra_info keys, kept as given (category, split, ...)."""


@dataclass
class ToolCallRecord:
    """One tool call made during a trajectory, successful or not."""

    name: str
    """Tool name as the model wrote it."""
    arguments: dict[str, Any]
    """Parsed arguments ({} when the call did not parse)."""
    error: str = ""
    """'' when the call ran; else the error message the model was shown."""
    box_original: list[float] | None = None
    """Zoom box mapped to original-image pixels [x1, y1, x2, y2] (for IoU)."""
    image_index: int | None = None
    """Index in Trajectory.images of the image the call produced."""

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class EndReason:
    """Why a trajectory ended, and whether it was cut short (a budget ran out) or ended itself."""

    name: str
    truncates: bool
    meaning: str


END_REASONS: dict[str, EndReason] = {r.name: r for r in (
    EndReason("answer", False, "the turn held an <answer>"),
    EndReason("no_tool_call", False, "the turn ended without a call or an answer"),
    EndReason("max_tool_calls", True, "the call budget was spent"),
    EndReason("max_response_tokens", True, "the generated-token budget was spent"),
    EndReason("max_tokens_per_turn", True, "a turn hit its token limit without a call or an answer"),
    EndReason("max_images", True, "the image budget was spent"),
    EndReason("max_model_len", True, "the sequence reached the engine's limit"),
)}


@dataclass
class RewardParts:
    """Every part of one trajectory's reward (rewards/score.py computes it), and the figures computed
    alongside. R = acc_reward + format_reward + tool_reward = total."""

    acc: float
    """1.0 when the answer is right, else 0.0."""
    format: float
    """0.0 when well formed, -1.0 otherwise."""
    tool: float
    """The tool bonus after gating, 0.0 or 1.0 (before its weight)."""
    acc_reward: float
    """acc times its weight (reward.weights of the sample's data source): its share of total."""
    format_reward: float
    """format times its weight."""
    tool_reward: float
    """tool times its weight."""
    total: float
    """The weighted sum: what the learner sees as the reward."""
    tool_used: float
    """1.0 when at least one call of a bonus-earning tool succeeded (before gating)."""
    tool_calls: float
    """Tool calls made, successful or not."""
    tool_errors: float
    """Tool calls that failed."""
    judged: float
    """1.0 when the judge gave acc."""
    undecided: float
    """1.0 when rules could not decide and no judge was configured (acc counted 0)."""
    iou: float | None = None
    """Mean over successful zooms of each box's best IoU with a ground-truth box; None if none."""
    iou_max: float | None = None
    """Best of those IoUs; None if none."""

    @property
    def correct(self) -> bool:
        """The answer counts as right (acc is 0 or 1; a judge's verdict too)."""
        return self.acc > 0.5


@dataclass
class Trajectory:
    """One rollout: exactly what the learner needs to recompute log-probs, plus what it did.

    T is the full sequence length: prompt and every turn, image pads expanded as the processor
    expands them (the learner's view; the engine was given one pad per image).
    """

    sample_id: str
    group_id: str
    input_ids: np.ndarray
    """(T,) int64 token ids the learner feeds."""
    loss_mask: np.ndarray
    """(T,) int8, 1 only on tokens the policy sampled (tool turns, image pads, scaffolding: 0)."""
    behavior_logprobs: np.ndarray
    """(T,) float32, log-prob of input_ids[t] under the behaviour policy where loss_mask is 1, else 0."""
    images: list[np.ndarray]
    """Every image fed to the model, (H, W, 3) uint8, already smart-resized: original, then crops."""
    policy_version: int
    """Version of the weights that produced every sampled token."""
    end_reason: str
    """A key of END_REASONS."""
    prompt_len: int = 0
    """Tokens before the first assistant turn."""
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    response_text: str = ""
    """Everything after the prompt, as text (for viewing and rewards)."""
    num_turns: int = 0
    """Assistant turns generated."""
    reward: float = 0.0
    """Total reward, what the learner reads: reward_parts.total once scored (learner tests and
    benchmarks set it alone)."""
    reward_parts: RewardParts | None = None
    """Every part of the reward (set by the reward task); None until scored."""
    timing: dict[str, float] = field(default_factory=dict)
    """Seconds spent: generate, tools, total."""

    @property
    def num_sampled_tokens(self) -> int:
        return int(self.loss_mask.sum())

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


class _Scored:
    """What a Group and its GroupSummary both read from their trajectories."""

    trajectories: list

    @property
    def policy_version(self) -> int:
        """The oldest policy that produced any of its tokens (staleness is measured from it)."""
        return min(t.policy_version for t in self.trajectories)

    @property
    def rewards(self) -> np.ndarray:
        """(n,) total rewards."""
        return np.array([t.reward for t in self.trajectories], dtype=np.float32)


@dataclass
class Group(_Scored):
    """One prompt x n trajectories, scored together; the unit of work everywhere."""

    group_id: str
    sample: Sample
    trajectories: list[Trajectory]

    @property
    def data_source(self) -> str:
        return self.sample.data_source

    def summary(self) -> GroupSummary:
        """The group without its tokens and images: what the driver reads to plan and log a step."""
        return GroupSummary(self.group_id, self.sample.data_source, [
            TrajectorySummary(self.group_id, index, len(t.input_ids), t.num_sampled_tokens,
                              t.policy_version, t.end_reason, t.tool_calls, t.reward, t.reward_parts)
            for index, t in enumerate(self.trajectories)])


@dataclass
class TrajectorySummary:
    """A Trajectory's figures, without its tokens and images (`Group.summary`)."""

    group_id: str
    index: int
    """Its position in the group's trajectories."""
    num_tokens: int
    num_sampled_tokens: int
    policy_version: int
    end_reason: str
    tool_calls: list[ToolCallRecord]
    reward: float
    reward_parts: RewardParts | None


@dataclass
class GroupSummary(_Scored):
    """A scored group's figures, kilobytes where the Group is megabytes: the driver plans and logs
    a step from these while the learner ranks fetch the groups themselves."""

    group_id: str
    data_source: str
    trajectories: list[TrajectorySummary]

    @property
    def response_tokens(self) -> int:
        """Tokens the policy sampled, summed over the group."""
        return sum(t.num_sampled_tokens for t in self.trajectories)


@dataclass
class FinishedGroup:
    """A scored group as the run hands it around: where the Group is in the object store, and its
    summary. The rollout pool makes one for each group an actor finishes; the replay queue holds
    them; the learner ranks fetch `ref` themselves, the driver reads only `summary`."""

    ref: Any
    """ray.ObjectRef of the Group (inside this record, so Ray never resolves it on the way)."""
    summary: GroupSummary

    @property
    def group_id(self) -> str:
        return self.summary.group_id

    @property
    def policy_version(self) -> int:
        """The oldest policy that produced any of its tokens."""
        return self.summary.policy_version
