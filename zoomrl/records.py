"""Trajectories as JSON lines, for reading what a policy did (`zoomrl rollout`, run directories)."""

from __future__ import annotations

from typing import Any

from zoomrl.types import Group, Trajectory


def trajectory_record(group: Group, index: int) -> dict[str, Any]:
    """One trajectory of a scored group: the question, what the policy wrote and did, its reward."""
    traj: Trajectory = group.trajectories[index]
    sample = group.sample
    return {
        "group_id": group.group_id, "index": index, "sample_id": sample.id,
        "data_source": sample.data_source, "question": sample.question, "choices": sample.choices,
        "answer": sample.answer, "gt_boxes": sample.gt_boxes, "policy_version": traj.policy_version,
        "end_reason": traj.end_reason, "num_turns": traj.num_turns,
        "response_tokens": traj.num_sampled_tokens, "sequence_tokens": int(len(traj.input_ids)),
        "image_sizes": [list(image.shape[:2]) for image in traj.images],
        "tool_calls": [{"name": call.name, "arguments": call.arguments, "error": call.error,
                        "box_original": call.box_original} for call in traj.tool_calls],
        "reward": traj.reward, "reward_parts": traj.reward_parts, "timing": traj.timing,
        "response_text": traj.response_text,
    }
