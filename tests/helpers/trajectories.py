"""Real multi-turn multimodal trajectories for tests, built with the tiny model's own processor.

Each trajectory is what the iMCoT loop records for one rollout that zoomed once:

    system + user(image 0, question) + assistant\n          prompt            mask 0
    <think> ... </think><tool_call>{...}</tool_call><|im_end|>   sampled turn 1    mask 1
    \n user(<tool_response> image 1 (a crop) </tool_response>) assistant\n   inserted  mask 0
    <think> ... </think><answer>B</answer><|im_end|>              sampled turn 2    mask 1

Image pads are expanded by the processor (the learner's view). Sampled turns hold tagged text
plus random ordinary tokens (their number varies, so lengths vary). Behaviour log-probs come
from a plain Hugging Face forward of the whole sequence (positions computed by transformers
itself), optionally perturbed so that PPO clipping has something to clip.

    from tests.helpers.trajectories import make_groups
    groups = make_groups(model_path, num_groups=2, n=4, seed=0)
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from core.types import Group, Sample, ToolCallRecord, Trajectory

QUESTION = "What is the colour of the star? Options: A. red B. blue C. green D. yellow"
TOOL_CALL = ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 20, 120, 160]}}'
             '</tool_call>')


def _ordinary_ids(tokenizer) -> np.ndarray:
    """Token ids a policy may sample as plain text (no special or tag tokens)."""
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)  # chat and tag tokens
    return np.array([i for i in range(len(tokenizer)) if i not in special])


def _encode(processor, text: str, images: list[np.ndarray]) -> np.ndarray:
    """Token ids of a text segment, each <|image_pad|> expanded for its image."""
    if not images:
        return np.asarray(processor.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    out = processor(text=[text], images=images, return_tensors="np")
    return out["input_ids"][0].astype(np.int64)


def _sampled_turn(processor, rng: np.random.Generator, ordinary: np.ndarray, n_random: int,
                  tail: str) -> np.ndarray:
    """An assistant turn as the policy sampled it: <think> random tokens </think> tail <|im_end|>."""
    tok = processor.tokenizer
    think = np.concatenate([tok.convert_tokens_to_ids(["<think>"]), rng.choice(ordinary, n_random),
                            tok.convert_tokens_to_ids(["</think>"])])
    rest = _encode(processor, tail + "<|im_end|>", [])
    return np.concatenate([think, rest]).astype(np.int64)


def build_trajectory(processor, rng: np.random.Generator, *, image_hw: tuple[int, int] = (280, 336),
                     crop_hw: tuple[int, int] | None = (224, 280), turn_tokens: tuple[int, int] = (12, 8),
                     group_id: str = "g0", sample_id: str = "s0") -> Trajectory:
    """One trajectory (behaviour log-probs left at 0: see `set_behavior_logprobs`).

    image_hw/crop_hw are (height, width), multiples of 28 inside the tiny preset's pixel budget;
    crop_hw None gives a single-turn trajectory with no tool call.
    """
    ordinary = _ordinary_ids(processor.tokenizer)
    image = rng.integers(0, 256, (*image_hw, 3), dtype=np.uint8)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True, tokenize=False)
    segments = [(_encode(processor, prompt, [image]), 0)]
    images, calls = [image], []
    if crop_hw is not None:
        crop = rng.integers(0, 256, (*crop_hw, 3), dtype=np.uint8)
        segments.append((_sampled_turn(processor, rng, ordinary, turn_tokens[0], TOOL_CALL), 1))
        observation = ("\n<|im_start|>user\n<tool_response><|vision_start|><|image_pad|><|vision_end|>"
                       "</tool_response><|im_end|>\n<|im_start|>assistant\n")
        segments.append((_encode(processor, observation, [crop]), 0))
        images.append(crop)
        calls.append(ToolCallRecord("image_zoom_in_tool", {"bbox_2d": [10, 20, 120, 160]}, image_index=1))
    segments.append((_sampled_turn(processor, rng, ordinary, turn_tokens[-1], "<answer>B</answer>"), 1))
    input_ids = np.concatenate([ids for ids, _ in segments])
    loss_mask = np.concatenate([np.full(len(ids), m, dtype=np.int8) for ids, m in segments])
    prompt_len = len(segments[0][0])
    return Trajectory(
        sample_id=sample_id, group_id=group_id, input_ids=input_ids, loss_mask=loss_mask,
        behavior_logprobs=np.zeros(len(input_ids), dtype=np.float32), images=images,
        policy_version=0, end_reason="answer", prompt_len=prompt_len, tool_calls=calls,
        response_text=processor.tokenizer.decode(input_ids[prompt_len:]), num_turns=len(calls) + 1)


@torch.no_grad()
def hf_logprobs(model: Qwen2_5_VLForConditionalGeneration, processor, traj: Trajectory,
                temperature: float = 1.0) -> torch.Tensor:
    """(T,) log p(input_ids[t] | < t) from a plain, unpacked HF forward (index 0 holds 0)."""
    return hf_logprobs_grad(model, processor, traj, temperature).detach()


def hf_logprobs_grad(model: Qwen2_5_VLForConditionalGeneration, processor, traj: Trajectory,
                     temperature: float = 1.0) -> torch.Tensor:
    """Like `hf_logprobs`, differentiable: the reference the learner is checked against.

    transformers computes the 3-D rotary positions itself here (from mm_token_type_ids), so
    this path shares no position code with `learner.batching.collate`.
    """
    ids = torch.as_tensor(traj.input_ids)[None]  # (1, T)
    vision = processor.image_processor(images=list(traj.images), return_tensors="pt")
    image_token_id = model.config.image_token_id
    logits = model(input_ids=ids, pixel_values=vision["pixel_values"],
                   image_grid_thw=vision["image_grid_thw"], mm_token_type_ids=(ids == image_token_id).int(),
                   use_cache=False).logits[0, :-1].float()
    logits = logits / temperature  # (T-1, V)
    logprobs = logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)  # (T-1,)
    return torch.nn.functional.pad(logprobs, (1, 0))


def set_behavior_logprobs(model, processor, traj: Trajectory, rng: np.random.Generator,
                          noise: float = 0.0) -> None:
    """Behaviour log-probs = the model's own (ratio 1), plus N(0, noise) where sampled."""
    logprobs = hf_logprobs(model, processor, traj).numpy()
    logprobs = logprobs + noise * rng.standard_normal(len(logprobs))
    traj.behavior_logprobs = (logprobs * traj.loss_mask).astype(np.float32)


@functools.lru_cache(maxsize=8)
def make_groups(model_path: str, num_groups: int = 2, n: int = 4, seed: int = 0, noise: float = 0.3,
                single_turn_every: int = 3) -> list[Group]:
    """num_groups scored groups of n trajectories with varied lengths, images and rewards.

    Every `single_turn_every`-th trajectory answers without zooming (one image); the others zoom
    once, with crops of varied sizes. Rewards are drawn from {0, 0.2, 1, 2.2}, never all equal
    within a group. Cached per arguments for the test session: do not modify the result (copy it).
    """
    rng = np.random.default_rng(seed)
    processor = AutoProcessor.from_pretrained(model_path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=torch.float32).eval()
    crops = [(168, 224), (112, 168), (168, 112), (56, 84)]
    groups = []
    for g in range(num_groups):
        group_id = f"g{seed}-{g}"
        sample = Sample(id=f"s{g}", data_source="synth_vstar", messages=[], images=[], question=QUESTION,
                        answer="B")
        trajectories = []
        for i in range(n):
            crop = None if (g * n + i) % single_turn_every == single_turn_every - 1 else crops[(g + i) % 4]
            traj = build_trajectory(processor, rng, image_hw=(224, 252), crop_hw=crop, group_id=group_id,
                                    sample_id=sample.id,
                                    turn_tokens=(int(rng.integers(4, 40)), int(rng.integers(4, 24))))
            set_behavior_logprobs(model, processor, traj, rng, noise)
            traj.reward = float(rng.choice([0.0, 0.2, 1.0, 2.2]))
            trajectories.append(traj)
        if len({t.reward for t in trajectories}) == 1:
            trajectories[0].reward += 1.0
        groups.append(Group(group_id, sample, trajectories))
    return groups
