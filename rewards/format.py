"""The DeepEyes format rule, applied to EVERY assistant turn (a peer checked only the last).

A trajectory is well formed when, in each turn the policy wrote, `<think>` and `</think>` counts
match, `<|vision_start|>` and `<|vision_end|>` counts match, and after the turn's last
`</think>` the `<answer>` and `</answer>` counts match; and the vision tokens of the whole
response (images the loop inserted included) balance. Over-long answers are handled by the
scorer, since they also zero accuracy.
"""

from __future__ import annotations

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"


def _balanced(text: str, opening: str, closing: str) -> bool:
    return text.count(opening) == text.count(closing)


def turn_well_formed(turn: str) -> bool:
    """The rules for one assistant turn."""
    after_thinking = turn.rsplit("</think>", 1)[-1]
    return (_balanced(turn, "<think>", "</think>")
            and _balanced(turn, VISION_START, VISION_END)
            and _balanced(after_thinking, "<answer>", "</answer>"))


def well_formed(turns: list[str], response_text: str) -> bool:
    """Every turn passes, and the whole response's images are complete."""
    return (all(turn_well_formed(turn) for turn in turns)
            and _balanced(response_text, VISION_START, VISION_END))
