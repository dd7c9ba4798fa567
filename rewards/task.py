"""Group scoring as a stateless Ray task."""

from __future__ import annotations

import ray

from core.config import RewardConfig
from core.types import Group
from rewards.score import score_group


@ray.remote
def score_group_task(group: Group, cfg: RewardConfig) -> Group:
    """`score_group` in a Ray worker; returns the group with rewards filled.

    A judge failure raises JudgeError from `ray.get`, so the caller sees it; Ray does not retry
    application errors, and the group is not queued with made-up rewards.
    """
    return score_group(group, cfg)
