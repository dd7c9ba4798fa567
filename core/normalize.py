"""Text normalization and number reading shared by the accuracy rules."""

from __future__ import annotations

import math
import re

_EDGE_PUNCTUATION = " \t\n.,;:!?\"'`()[]{}*"
# The same characters at the start, except a '.' opening a decimal: '.5' is 0.5, never 5.
_LEADING_PUNCTUATION = re.compile(r"^(?:[\s,;:!?\"'`()\[\]{}*]|\.(?!\d))+")
_LEADING_ARTICLE = re.compile(r"^(?:a|an|the)\s+")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


def normalize(text: str) -> str:
    """Lower case, single spaces, no punctuation at the ends, no leading article.

    'The Red car.' and 'red car' are equal; a bare 'A' stays 'a' (an option letter, not an
    article).
    """
    text = _strip_edges(" ".join(text.lower().split()))
    return _strip_edges(_LEADING_ARTICLE.sub("", text))


def _strip_edges(text: str) -> str:
    return _LEADING_PUNCTUATION.sub("", text).rstrip(_EDGE_PUNCTUATION)


def parse_number(text: str) -> float | None:
    """The number a whole answer states ('1,024', '$3.5', '12%', '-0.5'), else None."""
    text = _THOUSANDS.sub("", normalize(text)).removeprefix("$").removesuffix("%").strip()
    if not _NUMBER.fullmatch(text):
        return None
    number = float(text)
    return number if math.isfinite(number) else None


def numbers_equal(a: float, b: float) -> bool:
    """Equal up to float noise ('12' and '12.0', '0.1' and '0.10000001')."""
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
