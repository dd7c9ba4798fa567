"""The per-step training-dynamics figures (the paper's curves) from the groups a step trained on."""

from __future__ import annotations

import numpy as np

from core.config import RewardConfig
from core.types import Group, GroupSummary
from rewards.score import reward_weights

TRUNCATED = {"max_tool_calls", "max_response_tokens", "max_tokens_per_turn", "max_images", "max_model_len"}


def step_figures(groups: list[Group] | list[GroupSummary], learner_version: int,
                 reward_cfg: RewardConfig) -> dict[str, float]:
    """Means over every trajectory of the step; names as in core.metrics.METRICS."""
    trajectories = [(group, traj) for group in groups for traj in group.trajectories]

    def mean(values) -> float:
        values = list(values)
        return float(np.mean(values)) if values else 0.0

    def weight(group: Group, part: str) -> float:
        return float(getattr(reward_weights(group.data_source, reward_cfg), part))

    parts = [(g, t.reward_parts) for g, t in trajectories]
    return {
        "accuracy": mean(p.get("acc", 0.0) for _, p in parts),
        "reward_mean": mean(t.reward for _, t in trajectories),
        "reward_acc": mean(weight(g, "acc") * p.get("acc", 0.0) for g, p in parts),
        "reward_format": mean(weight(g, "format") * p.get("format", 0.0) for g, p in parts),
        "reward_tool": mean(weight(g, "tool") * p.get("tool", 0.0) for g, p in parts),
        "tool_calls_per_trajectory": mean(len(t.tool_calls) for _, t in trajectories),
        "tool_errors_per_trajectory": mean(sum(not c.ok for c in t.tool_calls) for _, t in trajectories),
        "zoom_share": mean(any(c.ok and c.box_original is not None for c in t.tool_calls)
                           for _, t in trajectories),
        "response_tokens": mean(t.num_sampled_tokens for _, t in trajectories),
        "grounding_iou": mean(p["iou_max"] for _, p in parts if "iou_max" in p),
        "end_answer_share": mean(t.end_reason == "answer" for _, t in trajectories),
        "end_truncated_share": mean(t.end_reason in TRUNCATED for _, t in trajectories),
        "policy_staleness": mean(learner_version - g.policy_version for g in groups),
    }
