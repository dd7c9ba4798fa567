"""Accuracy by rules, tried before any judge: 1.0 right, 0.0 wrong, None when rules cannot tell.

Rules decide when the answer is closed-form: an option (letter or option text), a yes/no, a
number, or a math expression that math-verify proves equal. A free-text answer that differs from
the ground truth in words is undecided: only a judge can say whether 'a red mug' is 'red'.
A `\\boxed{}` answer (math data) is compared by its content.
"""

from __future__ import annotations

from core.choices import choice_index
from core.normalize import normalize, numbers_equal, parse_number
from core.types import Sample
from rewards.answer import last_boxed
from rewards.mathcheck import looks_mathematical, math_equal

_BINARY = {"yes", "no", "true", "false"}


def _is_letter(text: str) -> bool:
    return len(text) == 1 and text.isalpha()


def _unboxed(text: str) -> str:
    """The content of the last \\boxed{} ('' for an empty one), else the whole text."""
    boxed = last_boxed(text)
    return text if boxed is None else boxed


def rule_accuracy(prediction: str, sample: Sample) -> float | None:
    """Score `prediction` (the text inside <answer>) against `sample.answer` by rules alone."""
    # Unbox first: math data (ThinkLite-VL) answers multiple choice as \boxed{B} too.
    candidate, gold = _unboxed(prediction), _unboxed(sample.answer)
    if not normalize(candidate):
        return 0.0  # an empty answer is wrong; no judge needed to say so
    if sample.choices or _is_letter(gold.strip()):
        got = choice_index(candidate, sample.choices)
        want = choice_index(gold, sample.choices)
        if got is not None and want is not None:
            return float(got == want)
        # Not one option on both sides: the rules below may still decide (a prediction '12.0'
        # against an option text '12'), else the judge.
    if normalize(candidate) == normalize(gold):
        return 1.0
    if normalize(candidate) in _BINARY and normalize(gold) in _BINARY:
        return 0.0
    got_number, want_number = parse_number(candidate), parse_number(gold)
    if got_number is not None and want_number is not None:
        return float(numbers_equal(got_number, want_number))
    if looks_mathematical(gold) and looks_mathematical(candidate) and math_equal(gold, candidate):
        return 1.0
    return None
