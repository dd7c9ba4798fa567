"""The broadcast weight sync into a real vLLM CPU engine: learner rank 0 in its own process sends
two successive versions over gloo through zoomrl's weight-transfer backend (registered by the
vllm plugin); after each, the engine's log-probs are transformers' with exactly those weights, and
not the version before's. The tiny model ties its lm_head to the embeddings: a sync that sent the
shared tensor once (under the embeddings' name) left the engine's lm_head at its start-up weights,
0.5-0.9 nats away (see learner.broadcast.policy_tensors)."""

from __future__ import annotations

import asyncio
import multiprocessing

import torch
from transformers import Qwen2_5_VLForConditionalGeneration
from vllm import SamplingParams, TokensPrompt
from vllm.config import WeightTransferConfig
from vllm.distributed.weight_transfer.base import WeightTransferInitRequest, WeightTransferUpdateRequest
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.v1.engine.async_llm import AsyncLLM

from core.collective_transfer import BACKEND, init_info, update_info
from core.weight_group import GroupSpec, member_names, rank_offsets, serve_store
from learner.broadcast import policy_tensors, wire_specs
from tests.helpers.group_members import moved, policy_sender

HOST = "127.0.0.1"
BUCKET_BYTES = 1 << 20  # the tiny model (~2 MiB in float32) in a few buckets
PROMPT = [17, 99, 3, 250, 41, 8, 130, 77, 61, 200, 5, 33]  # plain text tokens of the tiny vocabulary


def start_engine(model_path: str) -> AsyncLLM:
    args = AsyncEngineArgs(model=model_path, dtype="float32", max_model_len=512, enforce_eager=True,
                           enable_prefix_caching=False, limit_mm_per_prompt={"image": 0, "video": 0},
                           weight_transfer_config=WeightTransferConfig(backend=BACKEND))
    return AsyncLLM.from_engine_args(args)


async def engine_logprobs(llm: AsyncLLM, request_id: str) -> torch.Tensor:
    """log p(prompt token t | tokens before it), t = 1.., as the engine computes them."""
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0)
    async for out in llm.generate(TokensPrompt(prompt_token_ids=PROMPT), params, request_id):
        final = out
    return torch.tensor([entry[token].logprob for entry, token in zip(final.prompt_logprobs[1:], PROMPT[1:],
                                                                      strict=True)])


def transformers_logprobs(model) -> torch.Tensor:
    """log p(prompt token t | tokens before it), t = 1.., as transformers computes them (fp32)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([PROMPT])).logits[0, :-1]
    return logits.log_softmax(-1).gather(-1, torch.tensor(PROMPT[1:])[:, None])[:, 0]


def test_each_broadcast_version_is_the_one_served(tiny_model_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    reference = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path, dtype=torch.float32)
    specs = wire_specs(policy_tensors(reference), torch.float32)
    store = serve_store(HOST, timeout_s=120)
    spec = GroupSpec(HOST, store.port, generation=1, members=member_names(["rollout actor 0"], [1]),
                     communicator="gloo", timeout_s=120)
    versions = [1, 2]
    sender = multiprocessing.get_context("spawn").Process(
        target=policy_sender, args=(spec, tiny_model_path, versions, BUCKET_BYTES))
    sender.start()
    llm = start_engine(tiny_model_path)

    async def sync_and_compare() -> None:
        await llm.init_weight_transfer_engine(WeightTransferInitRequest(
            init_info(spec, rank_offsets([1])[0], BUCKET_BYTES)))
        before = await engine_logprobs(llm, "v0")
        for version in versions:
            await llm.start_weight_update()
            await llm.update_weights(WeightTransferUpdateRequest(update_info(1, version, specs)))
            await llm.finish_weight_update()
            await llm.reset_prefix_cache()
            served = await engine_logprobs(llm, f"v{version}")
            assert (served - before).abs().max() > 1e-2  # the version before is not what is served
            moved(reference, version)
            # Measured: text prompts agree to ~1e-6 (fp32); against the version before 1e-2 and more.
            torch.testing.assert_close(served, transformers_logprobs(reference), atol=1e-4, rtol=0)
            before = served

    try:
        asyncio.run(sync_and_compare())
    finally:
        llm.shutdown()
        sender.join(timeout=60)
    assert sender.exitcode == 0
