"""Attention over a packed row: each sequence attends causally to itself only, with no L x L mask.

transformers' "sdpa" handles a packed row by building a block-diagonal (L, L) mask, so attention
costs L^2 for the whole row however short its sequences are, and the mask rules out SDPA's
fast causal kernels. `packed_attention` is registered with transformers under `PACKED_ATTENTION`
and selected by `learner.model.load_policy` for the decoder and the vision tower alike; it picks
its kernel by the tensors it is given:

- CUDA, bf16/fp16: one call of torch 2.13's varlen flash attention (`torch.nn.attention.varlen`)
  over the whole row, sequences delimited by cumulative lengths: causal for the decoder,
  bidirectional per image or window for the vision tower. No loop, no mask. Never run here (no
  GPU); its equality with the SDPA path is a GPU-marked test.
- otherwise (CPU, or fp32 on a GPU, which flash does not take): SDPA once per sequence with
  `is_causal` and no mask (attention costs sum(T_i^2) and takes the flash path of CPU SDPA; the
  measurement is in learner/README.md); consecutive sequences of one length (the vision tower's
  windows, mostly) go in one call as a batch.

Sequence bounds: the decoder's come from `packed_kwargs`, computed once per forward from the text
positions (they restart at 0 at each sequence, `learner.batching.collate`) and passed to every
layer through the model's keyword arguments, so no layer waits on the device for them; called
without them (a plain forward), the bounds are read from `position_ids` in each layer. The vision
tower's come from the model itself: it hands `cu_seq_lens_q` (per image, or per window) to an
attention whose name contains "flash", hence the name. Because the name is unknown to
transformers' mask builders, they build no mask at all: a padded batch (B > 1) would lose its
padding mask, so it is refused.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.attention.varlen import varlen_attn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

PACKED_ATTENTION = "zoomrl_packed_flash"
"""The registered name; "flash" in it makes the vision tower pass its cumulative lengths in one call.
transformers would try to import a flash package for such a name in `from_pretrained`, so
`load_policy` loads with "sdpa" and sets this name on the config afterwards."""


def packed_kwargs(position_ids: Tensor) -> dict[str, Tensor | int]:
    """The model keyword arguments that carry a packed row's sequence bounds to every layer.

    position_ids (4, 1, L) as `collate` makes them (row 0: text positions, 0 at each sequence
    start). Returns packed_cu_seqlens (N+1,) int32 on the row's device (0, end of sequence 1, ...,
    L) and packed_max_seqlen, the longest sequence (one read from the device per forward).
    """
    cu_seqlens = _cu_seqlens(position_ids[0])
    return {"packed_cu_seqlens": cu_seqlens, "packed_max_seqlen": int(cu_seqlens.diff().max())}


def packed_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                     attention_mask: Tensor | None, **kwargs) -> tuple[Tensor, None]:
    """query (1, H, L, D), key and value (1, H_kv, L, D); returns (1, L, H, D) like SDPA's.

    Decoder layers (causal) give position_ids and, through `packed_kwargs`, the row's bounds;
    vision blocks (not causal) give their images' or windows' bounds as cu_seq_lens_q.
    """
    if not (query.is_cuda and query.dtype in (torch.bfloat16, torch.float16)):
        return packed_sdpa_attention(module, query, key, value, attention_mask, **kwargs)
    cu_seqlens, longest, causal = _bounds(module, query, kwargs)
    return varlen_attention(query, key, value, cu_seqlens, longest, causal, kwargs.get("scaling")), None


def packed_sdpa_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                          attention_mask: Tensor | None, **kwargs) -> tuple[Tensor, None]:
    """`packed_attention` off the varlen kernel: SDPA once per run of consecutive sequences (or
    images, or windows) of one length, the run as a batch. A vision tower's windows are mostly of
    one size, so its dozens of windows per image take one call instead of one each (on CPU each
    call, forward and backward, costs ~1 ms however small: 64 calls per block at 448 px)."""
    cu_seqlens, _, causal = _bounds(module, query, kwargs)
    outputs = []
    for start, length, count in _equal_length_runs(cu_seqlens.tolist()):
        end = start + length * count
        # (1, H, count * length, D) -> (count, H, length, D): each sequence of the run a batch row
        q, k, v = (t[0, :, start:end].unflatten(1, (count, length)).transpose(0, 1)
                   for t in (query, key, value))
        out = sdpa_attention_forward(module, q, k, v, None, is_causal=causal, **kwargs)[0]
        outputs.append(out.flatten(0, 1)[None])  # (count, length, H, D) -> (1, L, H, D)
    return torch.cat(outputs, dim=1), None


def _equal_length_runs(bounds: list[int]) -> list[tuple[int, int, int]]:
    """(start, length, count) of each run of consecutive equal-length sequences; bounds as cu_seqlens."""
    runs: list[tuple[int, int, int]] = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        if runs and runs[-1][1] == end - start:
            first, length, count = runs[-1]
            runs[-1] = (first, length, count + 1)
        else:
            runs.append((start, end - start, 1))
    return runs


def varlen_attention(query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor, max_seqlen: int,
                     causal: bool, scale: float | None) -> Tensor:
    """One varlen flash attention call over a packed row: query (1, H, L, D), key and value
    (1, H_kv, L, D), cu_seqlens (N+1,) -> (1, L, H, D). CUDA, bf16 or fp16 only."""
    cu_seqlens = cu_seqlens.to(torch.int32)
    # (L, H, D) rows, contiguous as transformers' own varlen path makes them
    query, key, value = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))
    out = varlen_attn(query, key, value, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scale,
                      window_size=(-1, 0) if causal else (-1, -1),
                      enable_gqa=query.shape[1] != key.shape[1])  # (L, H, D)
    return out[None]


def _bounds(module: nn.Module, query: Tensor, kwargs: dict) -> tuple[Tensor, int | None, bool]:
    """(cu_seqlens, longest sequence, causal) of an attention call; takes every bound-related
    keyword out of kwargs (the rest goes on to SDPA)."""
    for name in ("cu_seq_lens_k", "max_length_k", "is_causal"):  # equal to the _q ones, or implied
        kwargs.pop(name, None)
    vision_cu, vision_longest = kwargs.pop("cu_seq_lens_q", None), kwargs.pop("max_length_q", None)
    position_ids = kwargs.pop("position_ids", None)
    cu_seqlens, longest = kwargs.pop("packed_cu_seqlens", None), kwargs.pop("packed_max_seqlen", None)
    if not getattr(module, "is_causal", False):  # a vision block
        return vision_cu, vision_longest, False
    if query.shape[0] != 1:
        raise ValueError(f"{PACKED_ATTENTION} takes one packed row, got a batch of {query.shape[0]}")
    if cu_seqlens is None:  # a plain forward: the bounds from the positions, in every layer
        length = query.shape[2]
        cu_seqlens = (_cu_seqlens(position_ids) if position_ids is not None
                      else torch.tensor([0, length], dtype=torch.int32, device=query.device))
        longest = int(cu_seqlens.diff().max())
    return cu_seqlens, longest, True


def _cu_seqlens(text_positions: Tensor) -> Tensor:
    """(1, L) text positions -> (N+1,) int32 cumulative sequence lengths (a sequence starts at 0)."""
    positions = text_positions[0]
    starts = torch.nonzero(positions == 0).flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        raise ValueError(f"{PACKED_ATTENTION}: text positions must start every sequence at 0")
    end = torch.tensor([positions.shape[0]], device=starts.device)
    return torch.cat([starts, end]).to(torch.int32)


AttentionInterface.register(PACKED_ATTENTION, packed_attention)
