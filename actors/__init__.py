"""Rollout actors: vLLM engines running the iMCoT loop (generate -> zoom -> generate ...).

`RolloutActor` (Ray) wraps `RolloutWorker` (plain); `run_trajectory` is the loop itself.
"""

from actors.imcot import run_trajectory
from actors.rollout import GroupInfo, RolloutActor, RolloutWorker

__all__ = ["GroupInfo", "RolloutActor", "RolloutWorker", "run_trajectory"]
