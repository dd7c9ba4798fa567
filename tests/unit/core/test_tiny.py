"""The tiny Qwen2.5-VL folder loads with real transformers classes and generates."""

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from core.tiny import SPECIAL_TOKENS, TAG_TOKENS, tiny_model_dir
from zoomrl.run_setup import ensure_model


def test_folder_loads_and_generates_on_a_chat_with_an_image(tiny_model_path):
    processor = AutoProcessor.from_pretrained(tiny_model_path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path)
    messages = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What is the colour of the star?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (448, 448, 3), dtype=np.uint8))
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    # 448x448 = 16x16 merged patches = 256 image tokens, expanded from the one pad in the text
    assert inputs["image_grid_thw"].tolist() == [[1, 32, 32]]
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 256
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=True)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_tokenizer_has_every_special_token_and_tag_as_one_token(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    for token in SPECIAL_TOKENS + TAG_TOKENS:
        assert tokenizer.tokenize(token) == [token]
    text = "<think>zoom</think><tool_call>{\"bbox_2d\": [1, 2, 3, 4]}</tool_call>"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.eos_token == "<|im_end|>"


def test_model_is_tiny_and_seeded(tiny_model_path, tiny_cfg):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert model.config.text_config.vocab_size >= len(AutoTokenizer.from_pretrained(tiny_model_path))


def test_build_is_cached_and_reproducible(tiny_cfg, tiny_model_path, tmp_path):
    assert ensure_model(tiny_cfg.model) == tiny_model_path == str(tiny_model_dir(tiny_cfg.model))
    from core.tiny import build_tiny_model

    again = build_tiny_model(tiny_cfg.model, tmp_path / "tiny")
    a = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path).state_dict()
    b = Qwen2_5_VLForConditionalGeneration.from_pretrained(again).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_tiny_path_is_passed_through(tiny_cfg):
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(tiny_cfg, {"model": {"path": "/models/Qwen2.5-VL-7B-Instruct"}})
    assert ensure_model(cfg.model) == "/models/Qwen2.5-VL-7B-Instruct"
