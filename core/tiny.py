"""A tiny Qwen2.5-VL built from config alone: real transformers classes, random weights.

`zoomrl.run_setup.ensure_model(cfg.model)` returns a path for every component to load from, tiny
or 7B alike: for `model.path == "tiny"` it builds (`ensure_tiny_model`, once, cached under
`model.cache_dir`) a Hugging Face folder with a seeded random
`Qwen2_5_VLForConditionalGeneration`, a byte-level BPE tokenizer trained locally with the
`tokenizers` library (every Qwen2.5-VL special token plus our tags), the Qwen2.5-VL image
processor, a video processor and a Qwen-style chat template.

About torchvision: transformers' Qwen2.5-VL processor insists on a video processor, which
needs torchvision; vLLM's Qwen2-VL module imports torchvision too. PyPI's torchvision for our
CPU torch is a CUDA build that cannot load its native ops, so zoomrl installs a start-up shim
(`zoomrl_import_shim`, a .pth hook) that defines the two missing operator schemas and lets
torchvision's pure-Python transforms import. We keep the real video processor rather than
faking one, so the saved folder is an ordinary Qwen2.5-VL folder that any tool loads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from core.config import ModelConfig, TinyModelConfig

TINY_FORMAT = 1  # bump when the folder layout or tokenizer corpus changes (invalidates caches)

SPECIAL_TOKENS = [  # Qwen2.5-VL's special tokens, in Qwen's order
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# Tags the DeepEyes conversation uses; single tokens here so a tiny model can learn the format.
TAG_TOKENS = ["<tool_call>", "</tool_call>", "<think>", "</think>", "<answer>", "</answer>",
              "<tool_response>", "</tool_response>", "<tools>", "</tools>"]

CHAT_TEMPLATE = (  # Qwen2.5-VL's chat format; newlines are jinja string escapes so trimming keeps them
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def _tokenizer_corpus() -> list[str]:
    """Text the BPE merges are learned from: our conversation format and question vocabulary."""
    from core.synth import COLORS, POSITIONS, SHAPES

    words = list(COLORS) + list(SHAPES) + list(POSITIONS)
    lines = [
        "You are a helpful assistant.",
        "Think first, call image_zoom_in_tool if needed, then answer. Format strictly as: "
        "<think>...</think> <tool_call>...</tool_call> (if tools needed) <answer>...</answer>",
        '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [120, 340, 410, 720], '
        '"label": "the red star"}}',
        '{"name": "image_rotate_tool", "arguments": {"angle": 90}}',
        "What is the colour of the star? What shape is the blue object? Options: A. B. C. D.",
        "Answer with the option's letter from the given choices directly.",
        "Error: the box is outside the image. Error: invalid JSON in the tool call.",
        "The object is small, so I zoom in on the region to see it clearly. The answer is",
    ]
    lines += [f"Is the {c} {s} to the {p} of the object?" for c in words for s in SHAPES
              for p in POSITIONS]
    lines += [" ".join(str(n) for n in range(i, i + 50)) for i in range(0, 2100, 50)]
    return lines * 4


def _train_tokenizer(tiny: TinyModelConfig, corpus: list[str]):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=tiny.vocab_size - len(TAG_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_bos_token": "<|vision_start|>",
                              "vision_eos_token": "<|vision_end|>"},
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _build_model(tiny: TinyModelConfig, tokenizer):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = tiny.hidden_size // tiny.num_attention_heads
    # mrope splits head_dim/2 rotary frequencies over (time, height, width), like Qwen's 16/24/24.
    quarter = head_dim // 8
    mrope_section = [quarter, (head_dim // 2 - quarter) // 2, (head_dim // 2 - quarter) // 2]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=tiny.vocab_size,
            hidden_size=tiny.hidden_size,
            intermediate_size=tiny.intermediate_size,
            num_hidden_layers=tiny.num_hidden_layers,
            num_attention_heads=tiny.num_attention_heads,
            num_key_value_heads=tiny.num_key_value_heads,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": tiny.rope_theta,
                             "mrope_section": mrope_section},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=tiny.vision_depth,
            hidden_size=tiny.vision_hidden_size,
            intermediate_size=tiny.vision_intermediate_size,
            num_heads=tiny.vision_num_heads,
            out_hidden_size=tiny.hidden_size,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[tiny.vision_depth - 1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    torch.manual_seed(tiny.seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model


def _build_processor(tokenizer, model_cfg: ModelConfig):
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    size = {"shortest_edge": model_cfg.min_pixels, "longest_edge": model_cfg.max_pixels}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def tiny_model_dir(model_cfg: ModelConfig) -> Path:
    """Cache folder of the tiny model for these settings (content-addressed by its config)."""
    key = json.dumps({"format": TINY_FORMAT, "tiny": dataclasses.asdict(model_cfg.tiny)
                      if dataclasses.is_dataclass(model_cfg.tiny) else dict(model_cfg.tiny),
                      "pixels": [model_cfg.min_pixels, model_cfg.max_pixels]}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(model_cfg.cache_dir).expanduser() / "models" / f"tiny-qwen2.5-vl-{digest}"


def as_dataclass(node, cls: type):
    """A config section as its dataclass (OmegaConf nodes become plain dataclass instances)."""
    from omegaconf import OmegaConf

    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return node
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), node))


def save_folder(out_dir: Path, model, processor, tokenizer) -> Path:
    """Save a model folder at out_dir atomically: a crash leaves no half folder."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, out_dir)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not out_dir.exists():  # another process may have won the race; that is fine
            raise
    return out_dir


def build_tiny_model(model_cfg: ModelConfig, out_dir: Path) -> Path:
    """Build the tiny model folder at out_dir (atomically: a crash leaves no half folder)."""
    tiny = as_dataclass(model_cfg.tiny, TinyModelConfig)
    tokenizer = _train_tokenizer(tiny, _tokenizer_corpus())
    model = _build_model(tiny, tokenizer)
    processor = _build_processor(tokenizer, model_cfg)
    return save_folder(out_dir, model, processor, tokenizer)


def ensure_tiny_model(model_cfg: ModelConfig) -> Path:
    """The tiny model's folder for `model_cfg`, built on first use and cached."""
    out_dir = tiny_model_dir(model_cfg)
    if not (out_dir / "config.json").is_file():
        build_tiny_model(model_cfg, out_dir)
    return out_dir
