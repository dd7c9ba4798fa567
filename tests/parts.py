"""RewardParts for hand-built trajectories and records, weighted as the reference recipe weights."""

from core.config import RewardWeights
from core.types import RewardParts

FIGURES = {"tool_used": 0.0, "tool_calls": 0.0, "tool_errors": 0.0, "judged": 0.0, "undecided": 0.0}


def reward_parts(acc: float = 0.0, format: float = 0.0, tool: float = 0.0, **figures) -> RewardParts:
    """The parts of a trajectory scoring acc, format and tool; figures: any other field."""
    weights = RewardWeights()
    weighted = (weights.acc * acc, weights.format * format, weights.tool * tool)
    return RewardParts(acc=acc, format=format, tool=tool, acc_reward=weighted[0], format_reward=weighted[1],
                       tool_reward=weighted[2], total=sum(weighted), **(FIGURES | figures))
