"""Pull the answer out of what the policy wrote."""

from __future__ import annotations

import re

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = "\\boxed{"


def extract_answer(turns: list[str]) -> str | None:
    """The text inside the last complete <answer>...</answer> of the last turn that has one."""
    for turn in reversed(turns):
        found = _ANSWER.findall(turn)
        if found:
            return found[-1].strip()
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (braces matched), or None when there is none."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(_BOXED)
    for index in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[begin:index].strip()
    return None
