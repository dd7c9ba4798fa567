"""Split a trajectory's response text into the turns the policy wrote.

`Trajectory.response_text` is everything after the prompt WITH the chat template's special
tokens: assistant turns end at `<|im_end|>`, and each tool result is a user turn
(`<|im_start|>user ... <|im_end|>`) followed by `<|im_start|>assistant\\n` opening the next turn.
Format rules and answer extraction read only the assistant turns, so the instruction text the
loop repeats inside tool results (which names the tags) is never mistaken for the policy's.
A text with no template tokens is one assistant turn.
"""

from __future__ import annotations

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ASSISTANT = "assistant"


def assistant_turns(response_text: str) -> list[str]:
    """The text of every assistant turn, in order, without the template's tokens."""
    chunks = response_text.split(IM_START)
    turns = [chunks[0]] + [chunk[len(ASSISTANT):].removeprefix("\n") for chunk in chunks[1:]
                           if chunk.startswith(ASSISTANT)]
    return [turn.split(IM_END, 1)[0] for turn in turns]
