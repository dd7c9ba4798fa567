"""Multiple-choice answers: read an option from 'A', '(A)', 'A.', 'A: red', or the option text."""

from __future__ import annotations

import re

from core.normalize import normalize

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PREFIX = re.compile(r"^(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*",
                     re.IGNORECASE)
_LETTER = re.compile(r"\(?([A-Za-z])\)?(?:\s*[.:)]\s*(.*)|\s+(.*))?", re.DOTALL)


def choice_index(text: str, choices: list[str]) -> int | None:
    """Index of the option `text` names, or None when it names none (or contradicts itself).

    A letter followed by text ('B. red') counts only when the text is option B's or absent;
    'B. blue' where B is red is left to the judge. Without `choices` only a bare letter is read.
    """
    text = _PREFIX.sub("", text.strip()).strip()
    by_text = [i for i, choice in enumerate(choices) if normalize(choice) == normalize(text)]
    if len(by_text) == 1:
        return by_text[0]
    match = _LETTER.fullmatch(text)
    if match is None:
        return None
    index = LETTERS.index(match.group(1).upper())
    rest = match.group(2) or match.group(3) or ""
    if not rest.strip():
        return index
    if index < len(choices) and normalize(rest) == normalize(choices[index]):
        return index
    return None


def option_label(index: int, choices: list[str]) -> str:
    """'B. red': how an option is shown to the judge."""
    return f"{LETTERS[index]}. {choices[index]}" if index < len(choices) else LETTERS[index]
