"""The transformers side of a check against the engine: the policy and its log-probs, in fp32."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoImageProcessor, Qwen2_5_VLForConditionalGeneration


def hf_model(model_path, state: dict[str, torch.Tensor] | None = None) -> Qwen2_5_VLForConditionalGeneration:
    """The transformers model (fp32), with its own weights or `state`."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=torch.float32)
    if state is not None:
        model.load_state_dict(state)
    return model


def hf_logprobs(model_path, cfg, traj, model: Qwen2_5_VLForConditionalGeneration | None = None) -> np.ndarray:
    """log p(token t | < t) of the whole trajectory, recomputed by transformers (fp32), with the
    model of `model_path` or `model`."""
    model = model if model is not None else hf_model(model_path)
    processor = AutoImageProcessor.from_pretrained(
        model_path, size={"shortest_edge": cfg.model.min_pixels, "longest_edge": cfg.model.max_pixels})
    vision = processor(images=list(traj.images), return_tensors="pt")
    input_ids = torch.as_tensor(traj.input_ids)[None]
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=vision["pixel_values"],
                       image_grid_thw=vision["image_grid_thw"]).logits[0, :-1]
    logprobs = logits.log_softmax(-1).gather(-1, input_ids[0, 1:, None])[:, 0]
    return np.concatenate([[0.0], logprobs.numpy()])
