"""learner/model.py's own parts of the policy, against transformers' originals."""

from __future__ import annotations

import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionPatchEmbed

from learner.model import MatmulPatchEmbed


def test_patch_embedding_as_matmul_equals_the_convolution():
    """Same output and same weight gradient as transformers' Conv3d, and the same state dict keys."""
    torch.manual_seed(0)
    conv = Qwen2_5_VisionPatchEmbed(patch_size=14, temporal_patch_size=2, in_channels=3, embed_dim=32)
    matmul = MatmulPatchEmbed(Qwen2_5_VisionPatchEmbed(patch_size=14, temporal_patch_size=2, in_channels=3,
                                                       embed_dim=32))
    matmul.load_state_dict(conv.state_dict())
    assert list(matmul.state_dict()) == list(conv.state_dict()) == ["proj.weight"]
    patches = torch.randn(50, 3 * 2 * 14 * 14)  # as the image processor flattens them
    want, got = conv(patches), matmul(patches)
    assert got.shape == want.shape == (50, 32)
    assert torch.allclose(got, want, atol=1e-5)
    want.square().sum().backward()
    got.square().sum().backward()
    assert torch.allclose(matmul.proj.weight.grad, conv.proj.weight.grad, rtol=1e-4, atol=1e-4)
