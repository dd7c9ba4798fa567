import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize

from core.images import (
    ImageError,
    decode_image,
    encode_png,
    model_size,
    num_image_tokens,
    resize_for_model,
    smart_resize,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 9000), st.integers(1, 9000),
       st.sampled_from([(3136, 200704), (3136, 3211264), (56 * 56, 28 * 28 * 1280)]))
def test_smart_resize_matches_the_processor(height, width, budget):
    min_pixels, max_pixels = budget
    if max(height, width) / min(height, width) > 200:
        with pytest.raises(ImageError):
            smart_resize(height, width, min_pixels, max_pixels)
        return
    assert smart_resize(height, width, min_pixels, max_pixels) == hf_smart_resize(
        height, width, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)


def test_resized_image_is_a_fixed_point():
    image = Image.new("RGB", (2048, 1536), (10, 20, 30))
    pixels = resize_for_model(image, 3136, 200704)
    h, w, _ = pixels.shape
    assert (h % 28, w % 28) == (0, 0) and h * w <= 200704
    assert smart_resize(h, w, 3136, 200704) == (h, w)
    assert num_image_tokens(h, w) == (h // 28) * (w // 28)


@settings(max_examples=500, deadline=None)
@given(st.integers(1, 4000), st.integers(1, 4000),
       st.sampled_from([(28224, 50176), (3136, 200704), (56 * 56, 28 * 28 * 1280)]))
def test_model_size_is_kept_by_the_processor(height, width, budget):
    """Stored sizes must be fixed points of the processor's resize, or vLLM and the learner count
    different image tokens; (28224, 50176) is deepeyes-mini's narrow range, where smart_resize
    alone is not always one."""
    min_pixels, max_pixels = budget
    if max(height, width) / min(height, width) > 100:  # the zoom tool refuses such boxes
        return
    size = model_size(height, width, min_pixels, max_pixels)
    assert hf_smart_resize(*size, factor=28, min_pixels=min_pixels, max_pixels=max_pixels) == size


def test_thin_crop_gets_the_tokens_the_processor_gives_it():
    """The crop that made a deepeyes-mini run stop on a ViewMismatch: smart_resize puts 99x1595 at
    28x896 (32 tokens), which the processor resizes again to 56x952 (68 tokens)."""
    from transformers import Qwen2VLImageProcessor

    min_pixels, max_pixels = 28224, 50176
    pixels = resize_for_model(Image.new("RGB", (1595, 99), (200, 10, 10)), min_pixels, max_pixels)
    assert pixels.shape[:2] == (28, 1008)
    processor = Qwen2VLImageProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
    grid = processor(images=[pixels], return_tensors="pt")["image_grid_thw"]
    assert int(grid.prod()) // 4 == num_image_tokens(*pixels.shape[:2])


def test_decode_refuses_bad_bytes():
    with pytest.raises(ImageError, match="cannot decode"):
        decode_image(b"not an image", 10**8)


def test_decode_refuses_pixel_bombs_before_decoding():
    data = encode_png(np.zeros((1000, 1000, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="over the limit"):
        decode_image(data, max_pixels=999_999)
    assert decode_image(data, max_pixels=1_000_000).size == (1000, 1000)


def test_decode_converts_to_rgb():
    buffer = io.BytesIO()
    Image.new("L", (30, 20), 128).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), 10**6).mode == "RGB"
