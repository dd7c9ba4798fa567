"""A scripted engine for the iMCoT loop: it replies with given turns, so a trajectory is exact."""

from __future__ import annotations

from actors.engine import TurnOutput, TurnRequest
from core.images import num_image_tokens


class ScriptedEngine:
    """Writes script[k] as turn k (then `<|im_end|>` turns); logprob -(position+1)/100 per token."""

    def __init__(self, tokenizer, script: list[str]):
        self.tokenizer = tokenizer
        self.turn_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.script = script
        self.requests: list[TurnRequest] = []

    async def generate(self, request: TurnRequest) -> TurnOutput:
        turn = len(self.requests)
        self.requests.append(request)
        text = self.script[turn] if turn < len(self.script) else "<|im_end|>"
        tokens = self.tokenizer.encode(text, add_special_tokens=False)
        finish = "stop"
        if len(tokens) > request.max_tokens:
            tokens, finish = tokens[:request.max_tokens], "length"
        images = iter(request.images)
        expanded = []
        for token in request.engine_ids:
            expanded += [token] * (num_image_tokens(*next(images).shape[:2]) if token == self.pad_id else 1)
        return TurnOutput(prompt_ids=expanded, token_ids=tokens,
                          logprobs=[-(i + 1) / 100 for i in range(len(tokens))], finish_reason=finish)


def zoom(box, label="target") -> str:
    return ('<think>too small, zoom</think><tool_call>{"name": "image_zoom_in_tool", '
            f'"arguments": {{"bbox_2d": {list(box)}, "label": "{label}"}}}}</tool_call>')


ANSWER = "<think>now I see it</think><answer>B</answer><|im_end|>"
