import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize

from zoomrl.images import (
    ImageError,
    decode_image,
    encode_png,
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
