"""Rollout actors: vLLM engines running the iMCoT loop (generate -> zoom -> generate ...).

`RolloutActor` (Ray) wraps `RolloutWorker` (plain); `run_trajectory` is the loop itself.
"""

from actors.imcot import run_trajectory
from actors.rollout import RolloutActor, RolloutWorker

__all__ = ["RolloutActor", "RolloutWorker", "run_trajectory"]
