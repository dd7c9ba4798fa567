"""Symbolic equality of math answers, delegated to Hugging Face's math-verify (sympy based).

math-verify reads any letters as symbols ('red' equals 'der' as r*e*d), so it is only asked when
both sides look like mathematics: a digit, an operator or a LaTeX command, and no plain word of
two letters or more. Its timeouts use SIGALRM, which works only in a process's main thread (where
Ray runs a task); elsewhere it runs without one, which the length cap on answers keeps bounded.
"""

from __future__ import annotations

import re
import threading

from math_verify import parse, verify

TIMEOUT_S = 5
_MATH_SIGN = re.compile(r"[\d\\^=+*/]")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{2,}")


def looks_mathematical(text: str) -> bool:
    """True for '\\frac{1}{2}', 'x+1', '(1, 2)', '2\\pi'; false for 'red', '3 apples'."""
    return bool(_MATH_SIGN.search(text)) and not _WORD.search(_LATEX_COMMAND.sub(" ", text))


def math_equal(gold: str, prediction: str) -> bool:
    """Whether two answer expressions (without \\boxed) are mathematically the same."""
    timeout = TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout)
    pred_parsed = parse(f"\\boxed{{{prediction}}}", parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return verify(gold_parsed, pred_parsed, timeout_seconds=timeout)
