"""Multiple-choice options in prompt text: find them, list them, shuffle them, standardize answers.

Options appear in prompts as one line per option, lettered from A in order and written one way
throughout: '(A) red', 'A. red', 'A) red' or 'A: red' (V* from lmms-lab uses '(A)', zoomrl and
HR-Bench prompts 'A.'). Rows that carry no options field get theirs from these lines
(`core.data`), and shuffling rewrites the lines in the style they were found in.

Option shuffling gives each multiple-choice question a fixed random order (from a seed and the
question's id), remaps the answer letter and rewrites the option lines of the prompt, so a model
cannot score by always answering A (the reference release once put every answer there).
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass

from core.choices import LETTERS, choice_index
from core.types import Sample

OPTION_LETTERS = LETTERS

# One option line: an optional '(' , the letter, then ')' '.' or ':' and the option's text.
_OPTION_LINE = re.compile(r"[ \t]*(\(?)([A-Z])([.):])[ \t]+(\S.*?)\s*")
OPTION_STYLES = ("({letter}) {text}", "{letter}. {text}", "{letter}) {text}", "{letter}: {text}")
"""How an option line may be written; the first three are what releases and benchmarks use."""


@dataclass
class OptionBlock:
    """Consecutive option lines A, B, ... found in a text."""

    start: int
    """Offset in the text of the first line's first character."""
    end: int
    """Offset just past the last line's last character (its newline excluded)."""
    style: str
    """One of OPTION_STYLES."""
    options: list[str]
    """The option texts, in letter order."""


def _line_style(opening: str, closing: str) -> str | None:
    if opening:
        return OPTION_STYLES[0] if closing == ")" else None
    return {".": OPTION_STYLES[1], ")": OPTION_STYLES[2], ":": OPTION_STYLES[3]}[closing]


def option_blocks(text: str) -> list[OptionBlock]:
    """Every run of at least two option lines in `text` lettered A, B, C, ... in one style."""
    blocks: list[OptionBlock] = []
    current: OptionBlock | None = None
    offset = 0
    for line in text.split("\n"):
        match = _OPTION_LINE.fullmatch(line)
        style = match and _line_style(match.group(1), match.group(3))
        letter = match.group(2) if style else None
        if current is not None and style == current.style and letter == LETTERS[len(current.options)]:
            current.options.append(match.group(4))
            current.end = offset + len(line)
        else:
            if current is not None and len(current.options) >= 2:
                blocks.append(current)
            current = OptionBlock(offset, offset + len(line), style, [match.group(4)]) \
                if letter == "A" else None
        offset += len(line) + 1
    if current is not None and len(current.options) >= 2:
        blocks.append(current)
    return blocks


def render_options(options: list[str], style: str = OPTION_STYLES[1]) -> str:
    """The option lines of `options` in `style`; the default ('A. red\\nB. blue') is how zoomrl
    lists options in the prompts it writes."""
    return "\n".join(style.format(letter=LETTERS[i], text=text) for i, text in enumerate(options))


def text_before_options(text: str, block: OptionBlock) -> str:
    """The question alone: what precedes the option lines (all but them when nothing does)."""
    before = text[:block.start].strip()
    return before or (text[:block.start] + text[block.end:]).strip()


def shuffle_options(sample: Sample, seed: int) -> Sample:
    """A copy with the options in a fixed random order, the answer letter remapped and the prompt's
    option lines rewritten in the style they had; the same (seed, sample.id) always gives the same
    order.

    Raises ValueError when the answer is not one of the options or the prompt does not list the
    options once as option lines (then they cannot be moved; evaluate with the options as given).
    An open question (no choices) comes back unchanged.
    """
    if not sample.choices:
        return sample
    answer = choice_index(sample.answer, sample.choices)
    if answer is None or answer >= len(sample.choices):
        raise ValueError(f"answer {sample.answer!r} is not one of the options {sample.choices}")
    wanted = [c.strip() for c in sample.choices]
    found = [(i, block) for i, m in enumerate(sample.messages) if m["role"] == "user"
             for block in option_blocks(m["content"]) if block.options == wanted]
    if len(found) != 1:
        raise ValueError("the prompt does not list the options once as lines such as 'A. text' or "
                         "'(A) text', so they cannot be shuffled (keep them as given: "
                         "eval.shuffle_options=false)")
    holder, block = found[0]
    order = list(range(len(sample.choices)))
    random.Random(f"{seed}:{sample.id}").shuffle(order)
    choices = [sample.choices[i] for i in order]
    messages = [dict(m) for m in sample.messages]
    content = messages[holder]["content"]
    messages[holder]["content"] = (content[:block.start] + render_options(choices, block.style)
                                   + content[block.end:])
    return dataclasses.replace(sample, messages=messages, choices=choices,
                               answer=OPTION_LETTERS[order.index(answer)])


def standardize(sample: Sample) -> Sample:
    """The row in zoomrl's standard form: texts stripped, a multiple-choice answer as its letter.

    Call on checked rows (`core.data.check_labels`: the answer names one of the options).
    """
    choices = [c.strip() for c in sample.choices]
    answer = sample.answer.strip()
    if choices:
        answer = OPTION_LETTERS[choice_index(answer, choices)]
    return dataclasses.replace(sample, question=sample.question.strip(), choices=choices, answer=answer)
