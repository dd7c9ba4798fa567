"""image_zoom_in_tool: boxes are in the pixels the model saw, crops come from the original."""

import dataclasses

import numpy as np
import pytest

from core.config import ModelConfig, ToolsConfig
from core.images import ImageError, encode_png, resize_for_model, smart_resize
from tests.helpers import drawn
from tests.helpers.drawn import squares
from tools import ImageView, ToolCall, execute_tool, initial_view

MODEL = ModelConfig()  # 448x448 budget: a 2048x1536 original is seen at 504x364
TOOLS = ToolsConfig()
RED = (1500, 1000, 1540, 1040)  # a 40 px red square in original pixels
BLUE = (300, 200, 420, 320)  # a 120 px blue square


@pytest.fixture(scope="module")
def original() -> np.ndarray:
    return squares(2048, 1536, {RED: drawn.RED, BLUE: drawn.BLUE})


def zoom(views, box, key="bbox_2d", tools_cfg=TOOLS, **extra):
    return execute_tool(ToolCall("image_zoom_in_tool", {key: box, **extra}), views, tools_cfg,
                        MODEL)


def seen(view: ImageView, box) -> list[float]:
    """An original-pixel box in the pixels of `view` (what the model would write)."""
    sx, sy = view.scale()
    return [box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy]


def test_initial_view_is_the_smart_resized_original(view, original):
    assert view.pixels.shape == (364, 504, 3)
    assert smart_resize(1536, 2048, MODEL.min_pixels, MODEL.max_pixels) == (364, 504)
    assert view.original_size == (2048, 1536) and view.region == (0, 0, 2048, 1536)
    assert view.angle == 0.0


def test_box_in_seen_pixels_crops_that_place_of_the_original(view, original):
    outcome = zoom([view], seen(view, RED))
    assert outcome.error == ""
    np.testing.assert_allclose(outcome.box_original, RED, atol=1)
    crop = outcome.view.pixels
    assert crop.shape[0] % 28 == 0 and crop.shape[1] % 28 == 0
    red = (crop[..., 0] > 200) & (crop[..., 2] < 50)
    assert red.mean() > 0.8  # the crop IS the red square, at higher resolution than seen
    assert crop.shape[0] > (RED[3] - RED[1]) / view.scale()[1]


def test_the_crop_is_the_original_region_resized_by_the_processor_rule(view, original):
    from PIL import Image

    outcome = zoom([view], [10, 10, 200, 150])
    x1, y1, x2, y2 = outcome.view.region
    expected = resize_for_model(Image.fromarray(original).crop((x1, y1, x2, y2)),
                                MODEL.min_pixels, MODEL.max_pixels)
    np.testing.assert_array_equal(outcome.view.pixels, expected)
    np.testing.assert_allclose(outcome.box_original, [10 * 2048 / 504, 10 * 1536 / 364,
                                                      200 * 2048 / 504, 150 * 1536 / 364], atol=1)


def test_upstream_bug_box_taken_as_original_pixels_is_not_what_we_do(view):
    """Upstream cropped the ORIGINAL with a box meant for the resized image it showed.

    The red square sits at 1500-1540 original px = about 369-379 seen px. A box written in
    original pixels lies outside the 504x364 image the model saw: that is an error, never a
    crop of some other place.
    """
    assert "outside" in zoom([view], list(RED)).error
    small = [369.0, 237.0, 379.5, 246.5]  # the red square as the model sees it
    outcome = zoom([view], small)
    assert outcome.error == ""
    crop = outcome.view.pixels
    assert ((crop[..., 0] > 200) & (crop[..., 2] < 50)).mean() > 0.5  # not the black at (369, 237)


def test_upstream_bug_box_smaller_than_one_merged_patch_is_refused(view):
    """A box under 28 ORIGINAL pixels holds less than one image token of detail."""
    sx, sy = view.scale()
    tiny = [100, 100, 100 + 6, 100 + 6]  # 6 seen px = about 24x25 original px
    error = zoom([view], tiny).error
    assert "too small" in error and "28 original pixels" in error
    assert "7 pixels wide and 7 pixels tall in the latest image" in error
    enough = [100, 100, 100 + 28 / sx + 0.1, 100 + 28 / sy + 0.1]  # small when seen, 28 original px
    outcome = zoom([view], enough)
    assert outcome.error == "" and min(outcome.view.region[2] - outcome.view.region[0],
                                       outcome.view.region[3] - outcome.view.region[1]) >= 28


def test_min_box_side_is_configurable(view):
    box = seen(view, (0, 0, 100, 100))
    assert zoom([view], box).error == ""
    assert "too small" in zoom([view], box, tools_cfg=ToolsConfig(min_box_side=200)).error


@pytest.mark.parametrize("box", [[50, 50, 50, 80], [50, 50, 80, 50], [80, 50, 50, 90],
                                 [50, 90, 80, 50]])
def test_zero_or_negative_area_is_refused(view, box):
    assert "no area" in zoom([view], box).error


def test_box_is_clipped_to_the_image_it_refers_to(view):
    outcome = zoom([view], [-100, -50, 60, 40])
    assert outcome.error == ""
    assert outcome.view.region[:2] == (0, 0)
    np.testing.assert_allclose(outcome.box_original, [0, 0, 60 * 2048 / 504, 40 * 1536 / 364],
                               atol=1)
    assert "outside" in zoom([view], [600, 400, 700, 500]).error
    assert "outside" in zoom([view], [-90, -90, -10, -10]).error


@pytest.mark.parametrize("box", [[0, 0, 504, 364], [-40, -40, 600, 400], [0, 0, 503.9, 364]])
def test_a_box_covering_the_whole_latest_image_is_an_error_it_shows_nothing_new(view, box):
    """Such a "zoom" gives back the very image the model has: no perception, so no success (a
    successful call is what earns the tool bonus)."""
    outcome = zoom([view], box)
    assert "gave back the very image you already have" in outcome.error and outcome.view is None
    crop = zoom([view], seen(view, (200, 100, 800, 500))).view  # the same on a crop
    assert "gave back" in zoom([view, crop], [0, 0, crop.width, crop.height]).error
    # a real crop, even a large one, still works
    assert zoom([view], [0, 0, 500, 364]).error == ""
    assert zoom([view, crop], [0, 0, crop.width - 28, crop.height]).error == ""


def test_too_thin_boxes_are_refused(view):
    thin = ToolsConfig(max_aspect_ratio=3.0)
    assert "too thin" in zoom([view], [0, 0, 200, 20], tools_cfg=thin).error
    assert zoom([view], [0, 0, 60, 20], tools_cfg=thin).error == ""


def test_crop_of_a_crop_is_in_the_crops_coordinates(view):
    first = zoom([view], seen(view, (200, 100, 800, 500)))  # around the blue square
    assert first.error == ""
    crop = first.view
    # In the crop's own pixels the blue square (300-420, 200-320 original) sits here:
    sx, sy = crop.scale()
    x1, y1 = crop.region[:2]
    inner = [(BLUE[0] - x1) / sx, (BLUE[1] - y1) / sy, (BLUE[2] - x1) / sx, (BLUE[3] - y1) / sy]
    second = zoom([view, crop], inner)
    assert second.error == ""
    np.testing.assert_allclose(second.box_original, BLUE, atol=1.5)
    pixels = second.view.pixels
    assert ((pixels[..., 2] > 200) & (pixels[..., 0] < 50)).mean() > 0.8
    # The same numbers read against the FIRST view would point elsewhere: views[-1] is used.
    elsewhere = zoom([crop, view], inner)
    assert elsewhere.error == ""
    assert np.abs(np.subtract(elsewhere.box_original, BLUE)).max() > 100


def test_bbox_key_of_the_released_code_and_a_label_are_accepted(view):
    box = seen(view, RED)
    assert zoom([view], box, key="bbox").box_original == zoom([view], box).box_original
    assert zoom([view], box, label="red square").error == ""
    assert "'label' must be a string" in zoom([view], box, label=["red"]).error


@pytest.mark.parametrize("value, fragment", [
    ([1, 2, 3], "list of 4 numbers"),
    ("[1, 2, 30, 40]", "list of 4 numbers"),
    ([1, 2, "30", 40], "must be a number"),
    ([1, 2, True, 40], "must be a number"),
    ([1, 2, float("nan"), 40], "finite"),
    ([1, 2, float("inf"), 40], "finite"),
    ([1, 2, 10**400, 40], "finite"),
    ([[1, 2, 30, 40]], "list of 4 numbers"),
])
def test_malformed_boxes_are_errors_for_the_model(view, value, fragment):
    assert fragment in zoom([view], value).error


def test_missing_box_is_an_error(view):
    outcome = execute_tool(ToolCall("image_zoom_in_tool", {"label": "cat"}), [view], TOOLS, MODEL)
    assert "missing 'bbox_2d'" in outcome.error and outcome.view is None


def test_unknown_disabled_and_viewless_calls_are_errors(view):
    assert "unknown tool 'image_crop_tool'" in execute_tool(
        ToolCall("image_crop_tool", {}), [view], TOOLS, MODEL).error
    zoom_only = ToolsConfig(enabled=["image_zoom_in_tool"])
    assert "unknown tool 'image_rotate_tool'" in execute_tool(
        ToolCall("image_rotate_tool", {"angle": 90}), [view], zoom_only, MODEL).error
    assert "no image" in zoom([], [0, 0, 50, 50]).error


def test_arguments_that_are_not_an_object_are_an_error(view):
    outcome = execute_tool(ToolCall("image_zoom_in_tool", [1, 2, 30, 40]), [view], TOOLS, MODEL)
    assert "must be a JSON object" in outcome.error and outcome.view is None


def test_three_levels_of_crops_still_cut_the_original(view, original):
    """Each zoom maps through every earlier one: the third crop is the red square itself."""
    views = [view]
    for half_width in (400, 150, 20):  # original pixels around the red square's centre
        latest = views[-1]
        sx, sy = latest.scale()
        x0, y0 = latest.region[:2]
        box = [(1520 - half_width - x0) / sx, (1020 - half_width - y0) / sy,
               (1520 + half_width - x0) / sx, (1020 + half_width - y0) / sy]
        outcome = zoom(views, box)
        assert outcome.error == ""
        np.testing.assert_allclose(outcome.box_original, [1520 - half_width, 1020 - half_width,
                                                          1520 + half_width, 1020 + half_width],
                                   atol=1.5)
        views.append(outcome.view)
    from PIL import Image

    expected = resize_for_model(Image.fromarray(original).crop(views[-1].region),
                                MODEL.min_pixels, MODEL.max_pixels)
    np.testing.assert_array_equal(views[-1].pixels, expected)  # never a resample of a resample
    assert ((expected[..., 0] > 200) & (expected[..., 2] < 50)).mean() > 0.9


def test_bad_bytes_refused_at_start_and_as_an_error_in_a_call(view):
    with pytest.raises(ImageError, match="cannot decode"):
        initial_view(b"\x89PNG not really", MODEL, max_decoded_pixels=10**8)
    corrupt = dataclasses.replace(view, source=b"\x89PNG not really")
    outcome = zoom([corrupt], [0, 0, 100, 100])
    assert "cannot decode" in outcome.error and outcome.view is None


def test_pixel_bomb_refused_at_start_and_as_an_error_in_a_call(view):
    data = encode_png(np.zeros((1200, 1000, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="over the limit"):
        initial_view(data, MODEL, max_decoded_pixels=1_000_000)
    bomb = dataclasses.replace(view, source=data, max_decoded_pixels=1_000_000)
    assert "over the limit" in zoom([bomb], [0, 0, 100, 100]).error


def test_views_carry_the_source_they_were_made_from(view):
    outcome = zoom([view], [0, 0, 100, 100])
    assert outcome.view.source is view.source
    assert outcome.view.max_decoded_pixels == view.max_decoded_pixels
