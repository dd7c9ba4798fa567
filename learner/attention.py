"""Attention over a packed row: each sequence attends causally to itself only, with no L x L mask.

transformers' "sdpa" handles a packed row by building a block-diagonal (L, L) mask, so attention
costs L^2 for the whole row however short its sequences are, and the mask rules out SDPA's
fast causal kernels. This function runs SDPA once per sequence instead, with `is_causal` and no
mask: attention costs sum(T_i^2) and takes the flash path on CPU and GPU. It is registered
with transformers under `PACKED_SDPA` and selected by `learner.model.load_policy`
(the measurement is in learner/README.md).

Sequence starts are where the text positions restart at 0 (`position_ids[0]`, which the
decoder passes to attention as `position_ids` when given 4-row position ids; see
`learner.batching.collate`). Vision attention (not causal) is already split per image and window
by the model and goes to plain SDPA. Because the name is unknown to transformers' mask
builders, they build no mask at all: a padded batch (B > 1) would lose its padding mask, so it
is refused.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

PACKED_SDPA = "zoomrl_packed_sdpa"


def packed_sdpa_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                          attention_mask: Tensor | None, position_ids: Tensor | None = None,
                          **kwargs) -> tuple[Tensor, None]:
    """query (B, H, L, D), key and value (B, H_kv, L, D); returns (B, L, H, D) like SDPA's."""
    if not getattr(module, "is_causal", False):  # vision blocks: chunks already split by the model
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"{PACKED_SDPA} takes one packed row, got a batch of {query.shape[0]}")
    length = query.shape[2]
    starts = [0] if position_ids is None else torch.nonzero(position_ids[0] == 0).flatten().tolist()
    if starts[:1] != [0]:
        raise ValueError(f"{PACKED_SDPA}: text positions must start every sequence at 0")
    bounds = zip(starts, starts[1:] + [length], strict=True)
    kwargs.pop("is_causal", None)
    outputs = [sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None,
                                      is_causal=True, **kwargs)[0]
               for s, e in bounds]
    return torch.cat(outputs, dim=1), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
