"""Rewards: answer extraction, rule accuracy, the optional LLM judge, format, tool bonus, IoU.

Pure functions of a trajectory and its sample, callable in-process or as the Ray task
`score_group_task`. The reward formula and its parts are documented in `rewards.score`.
"""

from rewards.judge import JudgeClient, JudgeError
from rewards.score import score_group, score_trajectory
from rewards.task import score_group_task

__all__ = ["JudgeClient", "JudgeError", "score_group", "score_group_task",
           "score_trajectory"]
