"""The DeepEyes reward of a trajectory: R = w_acc*acc + w_format*format + w_tool*gate*tool.

- acc in {0, 1}: rules first (`rewards.rules`), the judge only for what rules leave undecided.
  With no judge configured an undecided answer scores 0 and is counted in `undecided`; with one
  configured, a judge that cannot be reached raises JudgeError (never a silent 0).
- format in {0, -1}: `rewards.format` on every assistant turn; an answer of `max_answer_chars`
  or more is also a format error and zeroes acc (anti reward hacking).
- tool in {0, 1}: the trajectory made at least one SUCCESSFUL call of a tool in
  `reward.bonus_tools` (default the zoom-in tool: DeepEyes rewards active perception, a crop),
  read from its ToolCallRecords, never from `<tool_call>` text (a peer paid the bonus for failed
  calls). A call that would give back the image the model already had (a rotation by a multiple
  of 360 degrees, a zoom box covering the whole latest image) is a failed call (`tools.execute`),
  so `rotate(0)` or a whole-image "zoom" plus a right answer scores acc alone. Gating:
  conditional (only when acc > 0.5, the paper's 1[R_acc > 0]), unconditional, or none (the
  paper's ablation).
- weights per `Sample.data_source`, 'default' for any source not listed.
Grounding IoU of the zoom boxes is reported, not rewarded.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

from core.choices import choice_index, option_label
from core.config import Gating, RewardConfig, RewardWeights
from core.types import Group, RewardParts, Sample, Trajectory
from rewards.answer import extract_answer
from rewards.format import well_formed
from rewards.iou import zoom_ious
from rewards.judge import judge_client
from rewards.rules import rule_accuracy
from rewards.turns import assistant_turns


@dataclass
class _Draft:
    """What one trajectory scores before the judge is asked."""

    answer: str | None
    acc: float | None
    """None while undecided by rules."""
    format: float
    judged: bool = False


def _draft(traj: Trajectory, sample: Sample, cfg: RewardConfig) -> _Draft:
    turns = assistant_turns(traj.response_text)
    answer = extract_answer(turns)
    format_part = 0.0 if well_formed(turns, traj.response_text) else -1.0
    if answer is None:
        return _Draft(answer, 0.0, format_part)
    if len(answer) >= cfg.max_answer_chars:
        return _Draft(answer, 0.0, -1.0)
    return _Draft(answer, rule_accuracy(answer, sample), format_part)


def _judge_question(sample: Sample) -> tuple[str, str]:
    """(question, reference answer) as the judge sees them: options spelled out."""
    if not sample.choices:
        return sample.question, sample.answer
    options = "\n".join(option_label(i, sample.choices) for i in range(len(sample.choices)))
    index = choice_index(sample.answer, sample.choices)
    answer = sample.answer if index is None else option_label(index, sample.choices)
    return f"{sample.question}\nOptions:\n{options}", answer


def reward_weights(data_source: str, cfg: RewardConfig) -> RewardWeights:
    """The weights of a data source: its own entry, else 'default'."""
    return cfg.weights[data_source] if data_source in cfg.weights else cfg.weights["default"]


def _tool_bonus(gating: Gating, used: bool, acc: float) -> float:
    if gating == "none":
        return 0.0
    if gating == "unconditional":
        return float(used)
    if gating == "conditional":
        return float(used and acc > 0.5)
    raise ValueError(f"reward.gating={gating!r} is not one of {', '.join(typing.get_args(Gating))}")


def _finish(traj: Trajectory, sample: Sample, draft: _Draft, cfg: RewardConfig) -> RewardParts:
    acc = draft.acc if draft.acc is not None else 0.0
    used = any(call.ok and call.name in cfg.bonus_tools for call in traj.tool_calls)
    tool = _tool_bonus(cfg.gating, used, acc)
    weights = reward_weights(sample.data_source, cfg)
    ious = zoom_ious(traj.tool_calls, sample.gt_boxes)
    weighted = (weights.acc * acc, weights.format * draft.format, weights.tool * tool)
    return RewardParts(
        acc=acc, format=draft.format, tool=tool, acc_reward=weighted[0], format_reward=weighted[1],
        tool_reward=weighted[2], total=sum(weighted),
        tool_used=float(used), tool_calls=float(len(traj.tool_calls)),
        tool_errors=float(sum(not call.ok for call in traj.tool_calls)),
        judged=float(draft.judged), undecided=float(draft.acc is None),
        iou=sum(ious) / len(ious) if ious else None, iou_max=max(ious) if ious else None)


def _score(trajectories: list[Trajectory], sample: Sample, cfg: RewardConfig) -> list[RewardParts]:
    drafts = [_draft(traj, sample, cfg) for traj in trajectories]
    pending = [d for d in drafts if d.acc is None]
    if pending and cfg.judge.base_url:
        question, answer = _judge_question(sample)
        verdicts = judge_client(cfg.judge).judge_all([(question, answer, d.answer) for d in pending])
        for draft, verdict in zip(pending, verdicts, strict=True):
            draft.acc, draft.judged = float(verdict), True
    return [_finish(traj, sample, draft, cfg)
            for traj, draft in zip(trajectories, drafts, strict=True)]


def score_trajectory(traj: Trajectory, sample: Sample, cfg: RewardConfig) -> RewardParts:
    """All reward parts of one trajectory (does not modify it); raises JudgeError."""
    return _score([traj], sample, cfg)[0]


def score_group(group: Group, cfg: RewardConfig) -> Group:
    """Fill `reward` and `reward_parts` of every trajectory (judge asked once per distinct answer)."""
    for traj, parts in zip(group.trajectories, _score(group.trajectories, group.sample, cfg),
                           strict=True):
        traj.reward, traj.reward_parts = parts.total, parts
    return group
