"""The per-step training-dynamics figures (the paper's curves) from the groups a step trained on."""

from __future__ import annotations

import numpy as np

from core.types import END_REASONS, Group, GroupSummary


def step_figures(groups: list[Group] | list[GroupSummary], learner_version: int) -> dict[str, float]:
    """Means over every trajectory of the step; names as in core.metrics.METRICS."""
    trajectories = [(group, traj) for group in groups for traj in group.trajectories]

    def mean(values) -> float:
        values = list(values)
        return float(np.mean(values)) if values else 0.0

    parts = [t.reward_parts for _, t in trajectories]
    return {
        "accuracy": mean(p.acc for p in parts),
        "reward_mean": mean(t.reward for _, t in trajectories),
        "reward_acc": mean(p.acc_reward for p in parts),
        "reward_format": mean(p.format_reward for p in parts),
        "reward_tool": mean(p.tool_reward for p in parts),
        "tool_calls_per_trajectory": mean(len(t.tool_calls) for _, t in trajectories),
        "tool_errors_per_trajectory": mean(sum(not c.ok for c in t.tool_calls) for _, t in trajectories),
        "zoom_share": mean(any(c.ok and c.box_original is not None for c in t.tool_calls)
                           for _, t in trajectories),
        "response_tokens": mean(t.num_sampled_tokens for _, t in trajectories),
        "grounding_iou": mean(p.iou_max for p in parts if p.iou_max is not None),
        "end_answer_share": mean(t.end_reason == "answer" for _, t in trajectories),
        "end_truncated_share": mean(END_REASONS[t.end_reason].truncates for _, t in trajectories),
        "policy_staleness": mean(learner_version - g.policy_version for g in groups),
    }
