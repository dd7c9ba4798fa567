"""The iMCoT loop: one coroutine per trajectory, alternating assistant turns and tool calls.

    prompt -> generate a turn -> answer or no call?  end
                      ^            | tool call
                      |            v
                      +---- insert the tool's response (a crop, or 'Error: ...')

A turn stops at `</tool_call>` or at the end of the turn; the loop enforces the stop even when
the engine ran past it (a reported upstream failure) by cutting tokens and text at the first
`</tool_call>`. Only the first call of a turn is executed. Every trajectory ends for exactly one
reason (`core.types.END_REASONS`), checked in this order after each turn: an answer; no call;
the call budget; the image budget. Token budgets (total response, per turn, the engine's
max_model_len) bound each request and end the trajectory when spent.

The engine and the tool runner are passed in, so the same loop runs on vLLM in a rollout actor
and on a scripted engine in unit tests.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from omegaconf import OmegaConf

from actors.engine import TOOL_CALL_STOP, TurnOutput, TurnRequest
from actors.prompt import render_prompt, tool_response
from actors.sequence import TokenSequence
from core.config import Config
from core.types import Sample, ToolCallRecord, Trajectory
from rewards.answer import extract_answer
from tools import ImageView, ToolCall, ToolCallError, ToolOutcome, parse_tool_call

ToolRunner = Callable[[ToolCall, ImageView], Awaitable[ToolOutcome]]


class Engine(Protocol):
    """What the loop needs from a generation engine (actors.engine.VLLMEngine in production)."""

    tokenizer: object
    turn_end_id: int

    async def generate(self, request: TurnRequest) -> TurnOutput: ...


def turn_seed(base: int | None, group_id: str, index: int, turn: int) -> int | None:
    """A sampling seed per (group, trajectory, turn) from rollout.seed, so a rollout replays exactly."""
    if base is None:
        return None
    digest = hashlib.sha256(f"{base}/{group_id}/{index}/{turn}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def cut_at_stop(tokenizer, token_ids: list[int], stop: str = TOOL_CALL_STOP) -> int:
    """How many tokens to keep: up to the one completing the first `stop`, or all of them.

    Decoding a prefix is monotone in the stop's presence, so a binary search finds the cut.
    """
    def has_stop(k: int) -> bool:
        return stop in tokenizer.decode(token_ids[:k], skip_special_tokens=False)

    if not token_ids or not has_stop(len(token_ids)):
        return len(token_ids)
    low, high = 1, len(token_ids)
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if has_stop(mid) else (mid + 1, high)
    return low


class _Budget:
    """Token limits of one trajectory."""

    def __init__(self, cfg: Config) -> None:
        self.per_turn = cfg.rollout.max_tokens_per_turn
        self.response = cfg.rollout.max_response_tokens
        self.model_len = cfg.rollout.engine.max_model_len
        self.generated = 0

    def next_turn(self, sequence_len: int) -> int:
        return min(self.per_turn, self.response - self.generated, self.model_len - sequence_len)

    def spent_reason(self, sequence_len: int) -> str:
        """Why a turn was cut by length: the response budget, the engine's length, or the turn's."""
        if self.generated >= self.response:
            return "max_response_tokens"
        if sequence_len >= self.model_len:
            return "max_model_len"
        return "max_tokens_per_turn"


async def run_trajectory(sample: Sample, views: list[ImageView], engine: Engine, run_tool: ToolRunner,
                         cfg: Config, *, group_id: str, index: int, policy_version: int) -> Trajectory:
    """Roll out one trajectory of `sample` whose images the model first sees as `views`."""
    start = time.perf_counter()
    tokenizer, rollout = engine.tokenizer, cfg.rollout
    views = list(views)
    seq = TokenSequence(image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    seq.insert(tokenizer.encode(render_prompt(sample, list(cfg.tools.enabled)), add_special_tokens=False),
               [view.pixels for view in views])
    prompt_len, prompt_engine_len = len(seq.ids), len(seq.engine_ids)
    budget, calls = _Budget(cfg), []
    timing = {"generate": 0.0, "tools": 0.0}
    num_turns, end_reason = 0, ""
    extra_args = OmegaConf.to_container(rollout.sampling_extra_args) if OmegaConf.is_config(
        rollout.sampling_extra_args) else dict(rollout.sampling_extra_args)  # plain values for vLLM
    while not end_reason:
        max_tokens = budget.next_turn(len(seq.ids))
        if max_tokens <= 0:
            end_reason = budget.spent_reason(len(seq.ids))
            break
        tick = time.perf_counter()
        out = await engine.generate(TurnRequest(
            engine_ids=list(seq.engine_ids), images=list(seq.images), max_tokens=max_tokens,
            temperature=rollout.temperature, seed=turn_seed(rollout.seed, group_id, index, num_turns),
            extra_args={**extra_args, "zoomrl_turn": num_turns, "zoomrl_trajectory": index}))
        timing["generate"] += time.perf_counter() - tick
        seq.check_engine_view(out.prompt_ids)
        keep = cut_at_stop(tokenizer, out.token_ids)
        tokens = out.token_ids[:keep]
        seq.append_sampled(tokens, out.logprobs[:keep])
        budget.generated += len(tokens)
        num_turns += 1
        text = tokenizer.decode(tokens, skip_special_tokens=False)
        call = parse_tool_call(text) if cfg.tools.enabled else None  # no tools: every turn is the last
        if extract_answer([text]) is not None:
            end_reason = "answer"
        elif call is None:
            cut_by_length = out.finish_reason == "length" and keep == len(out.token_ids)
            end_reason = budget.spent_reason(len(seq.ids)) if cut_by_length else "no_tool_call"
        elif len(calls) >= rollout.max_tool_calls:
            end_reason = "max_tool_calls"
        elif isinstance(call, ToolCall) and len(seq.images) >= rollout.max_images:
            end_reason = "max_images"
        else:
            tick = time.perf_counter()
            record, new_view = await _call_tool(call, views, run_tool)
            timing["tools"] += time.perf_counter() - tick
            calls.append(record)
            closing = "\n" if tokens and tokens[-1] == engine.turn_end_id else "<|im_end|>\n"
            inserted = closing + tool_response(with_image=new_view is not None, error=record.error)
            seq.insert(tokenizer.encode(inserted, add_special_tokens=False),
                       [new_view.pixels] if new_view is not None else [])
            if new_view is not None:
                views.append(new_view)
                record.image_index = len(seq.images) - 1
    input_ids, loss_mask, behavior_logprobs = seq.arrays()
    timing["total"] = time.perf_counter() - start
    return Trajectory(
        sample_id=sample.id, group_id=group_id, input_ids=input_ids, loss_mask=loss_mask,
        behavior_logprobs=behavior_logprobs, images=list(seq.images), policy_version=policy_version,
        end_reason=end_reason, prompt_len=prompt_len, tool_calls=calls,
        response_text=tokenizer.decode(seq.engine_ids[prompt_engine_len:], skip_special_tokens=False),
        num_turns=num_turns, timing=timing)


async def _call_tool(call: ToolCall | ToolCallError, views: list[ImageView],
                     run_tool: ToolRunner) -> tuple[ToolCallRecord, ImageView | None]:
    """Run a parsed call on the latest view; an unreadable call is an error record, never raised."""
    if isinstance(call, ToolCallError):
        return ToolCallRecord(name="", arguments={}, error=call.message), None
    outcome = await run_tool(call, views[-1])
    record = ToolCallRecord(name=call.name, arguments=call.arguments, error=outcome.error,
                            box_original=outcome.box_original)
    return record, outcome.view
