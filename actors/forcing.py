"""A vLLM logits processor that scripts assistant turns: the engine writes given text, token by token.

For demos and tests: a random tiny model almost never writes a valid tool call, yet the crop path
must run end to end through the real engine. With

    rollout.engine.logits_processors=[actors.forcing:ForcedTurnsLogitsProcessor]
    rollout.sampling_extra_args={forced_turns: ["<think>..</think><tool_call>..</tool_call>", ...]}

turn k of every trajectory is forced to forced_turns[k] (the loop passes the turn number as
extra_args['zoomrl_turn']); turns past the list are sampled freely. To script the trajectories of
a group differently, give `forced_turns_by_trajectory: [[text, ...], [text, ...], ...]` instead:
trajectory i follows list i modulo their number (the loop passes i as
extra_args['zoomrl_trajectory']). Forcing keeps the model's
own logit for the forced token and sets every other to -inf, so the engine's RAW log-probs
(temperature 1) are the model's log-probs of the scripted text, as the learner recomputes them.
End a scripted turn with `</tool_call>` or `<|im_end|>` so it stops there.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from transformers import AutoTokenizer
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor


class ForcedTurnsLogitsProcessor(AdapterLogitsProcessor):
    """Per request: force the tokens of extra_args['forced_turns'][extra_args['zoomrl_turn']]."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        tokenizer = AutoTokenizer.from_pretrained(vllm_config.model_config.tokenizer)
        self._encode = lru_cache(maxsize=256)(
            lambda text: tuple(tokenizer.encode(text, add_special_tokens=False)))

    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        extra = params.extra_args or {}
        scripts = [extra.get("forced_turns", [])] + list(extra.get("forced_turns_by_trajectory", []))
        for script in scripts:
            if not isinstance(script, list) or not all(isinstance(text, str) for text in script):
                raise ValueError("extra_args['forced_turns'] must be a list of strings, and "
                                 "extra_args['forced_turns_by_trajectory'] a list of such lists")

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token wins

    def new_req_logits_processor(self, params: SamplingParams):
        extra = params.extra_args or {}
        forced, turn = extra.get("forced_turns", []), extra.get("zoomrl_turn", 0)
        by_trajectory = extra.get("forced_turns_by_trajectory", [])
        if by_trajectory:
            forced = by_trajectory[extra.get("zoomrl_trajectory", 0) % len(by_trajectory)]
        if turn >= len(forced):
            return None
        token_ids = self._encode(forced[turn])

        def force(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            step = len(output_ids)
            if step >= len(token_ids):
                return logits
            forced_logits = torch.full_like(logits, float("-inf"))
            forced_logits[token_ids[step]] = logits[token_ids[step]]
            return forced_logits

        return force
