"""image_rotate_tool: counter-clockwise, canvas expanded, always re-cut from the original."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from core.config import ModelConfig, ToolsConfig
from core.images import resize_for_model, smart_resize
from tests.helpers import drawn
from tests.helpers.drawn import squares
from tools import ToolCall, execute_tool

MODEL = ModelConfig()  # 448x448 budget: a 2048x1536 original is seen at 504x364
TOOLS = ToolsConfig(enabled=["image_zoom_in_tool", "image_rotate_tool"])  # rotate: eval only
W, H = 2048, 1536
RED = (1500, 1000, 1540, 1040)  # 40 px red square, original pixels
GREEN = (1900, 20, 2040, 160)  # green square in the top-right corner


@pytest.fixture(scope="module")
def original() -> np.ndarray:
    # grey, so the expanded canvas's black shows
    return squares(W, H, {RED: drawn.RED, GREEN: drawn.GREEN}, background=40)


def rotate(views, angle):
    return execute_tool(ToolCall("image_rotate_tool", {"angle": angle}), views, TOOLS, MODEL)


def zoom(views, box):
    return execute_tool(ToolCall("image_zoom_in_tool", {"bbox_2d": box}), views, TOOLS, MODEL)


def centre(pixels: np.ndarray, colour: tuple[int, int, int]) -> tuple[float, float]:
    """Centroid (x, y) of the pixels close to `colour`, as fractions of width and height."""
    mask = (np.abs(pixels.astype(int) - colour).max(axis=2) < 60)
    ys, xs = np.nonzero(mask)
    assert len(xs) > 0, f"no pixel of colour {colour}"
    return xs.mean() / pixels.shape[1], ys.mean() / pixels.shape[0]


def test_rotate_90_turns_counter_clockwise_losslessly(view, original):
    outcome = rotate([view], 90)
    assert outcome.error == "" and outcome.box_original is None
    turned = outcome.view
    assert turned.angle == 90.0 and turned.region == (0, 0, H, W)  # the frame is portrait
    expected = resize_for_model(Image.fromarray(original).transpose(Image.Transpose.ROTATE_90),
                                MODEL.min_pixels, MODEL.max_pixels)
    np.testing.assert_array_equal(turned.pixels, expected)
    assert turned.pixels.shape == (504, 364, 3)
    # Counter-clockwise: the top-right corner goes to the top-left.
    x, y = centre(turned.pixels, (0, 255, 0))
    assert x < 0.1 and y < 0.1


def test_negative_angles_turn_clockwise(view):
    outcome = rotate([view], -90)
    assert outcome.view.angle == 270.0
    x, y = centre(outcome.view.pixels, (0, 255, 0))
    assert x > 0.9 and y > 0.9  # clockwise: the top-right corner goes to the bottom-right


@pytest.mark.parametrize("angle", [0, 360, -720, 1e-20, -1e-20])
def test_full_turns_are_an_error_they_show_nothing_new(view, angle):
    """A turn that gives back the very image the model has perceived nothing (1e-20 degrees is a
    tiny angle, but its pixels are the image's own): an error, not a success that earns a bonus."""
    outcome = rotate([view], angle)
    assert "gave back the very image you already have" in outcome.error and outcome.view is None
    turned = rotate([view], 90).view
    assert "gave back" in rotate([view, turned], 360).error  # of a turned view too
    assert rotate([view, turned], -90).view.angle == 0.0  # turning back is a new image


def test_rotate_is_off_in_the_training_defaults(view):
    """DeepEyes trains with zoom-in only; rotate is offered zero-shot at evaluation."""
    assert list(ToolsConfig().enabled) == ["image_zoom_in_tool"]
    assert "unknown tool 'image_rotate_tool'" in execute_tool(
        ToolCall("image_rotate_tool", {"angle": 90}), [view], ToolsConfig(), MODEL).error


def test_other_angles_expand_the_canvas_so_no_corner_is_cut(view, original):
    outcome = rotate([view], 30)
    turned = outcome.view
    # By hand: 2048 cos30 + 1536 sin30 = 2541.6 -> 2542; 2048 sin30 + 1536 cos30 = 2354.2 -> 2355.
    assert turned.region == (0, 0, 2542, 2355)
    assert turned.pixels.shape[:2] == smart_resize(2355, 2542, MODEL.min_pixels, MODEL.max_pixels)
    assert turned.pixels.shape[0] % 28 == 0 and turned.pixels.shape[1] % 28 == 0
    assert turned.pixels[0, 0].max() < 10 and turned.pixels[-1, -1].max() < 10  # black corners
    # Every coloured square survives, where PIL's own counter-clockwise expanding rotate puts it.
    reference = np.asarray(Image.fromarray(original).rotate(30, expand=True))
    for colour in [(255, 0, 0), (0, 255, 0)]:
        np.testing.assert_allclose(centre(turned.pixels, colour), centre(reference, colour),
                                   atol=0.01)


def test_rotations_add_up_and_are_cut_from_the_original(view):
    once = rotate([view], 90).view
    twice = rotate([view, rotate([view], 30).view], 60).view
    assert twice.angle == 90.0 and twice.region == once.region
    np.testing.assert_array_equal(twice.pixels, once.pixels)  # not a resample of a resample


def test_zoom_into_a_rotated_view_crops_the_right_original_region(view):
    turned = rotate([view], 90).view
    # By hand, turning 90 degrees counter-clockwise maps original (x, y) to frame (y, 2048 - x):
    # the red square is frame x 1000-1040, y 508-548.
    sx, sy = turned.scale()
    outcome = zoom([view, turned], [1000 / sx, 508 / sy, 1040 / sx, 548 / sy])
    assert outcome.error == ""
    np.testing.assert_allclose(outcome.box_original, RED, atol=2)
    assert outcome.view.angle == 90.0  # the crop stays turned
    red = centre(outcome.view.pixels, (255, 0, 0))
    np.testing.assert_allclose(red, (0.5, 0.5), atol=0.1)


def test_zoom_into_an_oblique_view_is_reported_as_the_box_around_it(view):
    turned = rotate([view], 30).view
    # The red square's centre (1520, 1020) in the 30-degree frame, by the frame's own mapping:
    from tools.frame import original_to_frame

    cx, cy = original_to_frame(np.array([[1520.0, 1020.0]]), (W, H), 30.0)[0]
    sx, sy = turned.scale()
    outcome = zoom([turned], [(cx - 60) / sx, (cy - 60) / sy, (cx + 60) / sx, (cy + 60) / sy])
    assert outcome.error == ""
    x1, y1, x2, y2 = outcome.box_original
    assert x1 <= RED[0] and y1 <= RED[1] and x2 >= RED[2] and y2 >= RED[3]  # contains the square
    side = 120 * (np.cos(np.pi / 6) + np.sin(np.pi / 6))  # a turned 120 px square's extent: 164
    assert x2 - x1 == pytest.approx(side, abs=3) and y2 - y1 == pytest.approx(side, abs=3)
    np.testing.assert_allclose(centre(outcome.view.pixels, (255, 0, 0)), (0.5, 0.5), atol=0.1)


def test_rotating_a_crop_turns_just_that_crop(view, original):
    crop = zoom([view], [300, 200, 400, 300]).view
    x1, y1, x2, y2 = crop.region
    turned = rotate([view, crop], 90).view
    assert turned.region == (y1, W - x2, y2, W - x1)  # the crop's place in the portrait frame
    expected = Image.fromarray(original).crop(crop.region).transpose(Image.Transpose.ROTATE_90)
    np.testing.assert_array_equal(turned.pixels,
                                  resize_for_model(expected, MODEL.min_pixels, MODEL.max_pixels))


def test_rotating_a_crop_obliquely_shows_the_box_around_it(view):
    crop = zoom([view], [300, 200, 400, 300]).view
    turned = rotate([crop], 45).view
    width, height = crop.region[2] - crop.region[0], crop.region[3] - crop.region[1]
    # The box around a w x h rectangle turned 45 degrees has sides (w + h) / sqrt(2).
    side = (width + height) / np.sqrt(2)
    got_w, got_h = turned.region[2] - turned.region[0], turned.region[3] - turned.region[1]
    assert got_w == pytest.approx(side, abs=2) and got_h == pytest.approx(side, abs=2)
    assert got_w < turned.frame_size[0] / 2  # still a crop, not the whole turned image


@pytest.mark.parametrize("arguments, fragment", [
    ({}, "missing 'angle'"),
    ({"degrees": 90}, "missing 'angle'"),
    ({"angle": "90"}, "must be a number"),
    ({"angle": True}, "must be a number"),
    ({"angle": None}, "must be a number"),
    ({"angle": [90]}, "must be a number"),
    ({"angle": float("nan")}, "finite"),
    ({"angle": float("-inf")}, "finite"),
    ({"angle": 10**400}, "finite"),
    ({"angle": 10**5000}, "too large to show"),  # past Python's int-to-str limit
])
def test_bad_angles_are_errors_for_the_model(view, arguments, fragment):
    outcome = execute_tool(ToolCall("image_rotate_tool", arguments), [view], TOOLS, MODEL)
    assert fragment in outcome.error and outcome.view is None


def test_rotating_bad_bytes_is_an_error_for_the_model(view):
    corrupt = dataclasses.replace(view, source=b"GIF89a broken")
    outcome = rotate([corrupt], 90)
    assert "cannot decode" in outcome.error and outcome.view is None


@pytest.mark.parametrize("angle", [90.0, 180.0, 270.0, 30.0, 301.5])
def test_a_frame_region_is_that_region_of_the_whole_turned_frame(original, angle):
    from tools.frame import frame_region, frame_size

    image = Image.fromarray(original[::4, ::4])  # 512x384 keeps the whole-frame warp quick
    whole = np.asarray(frame_region(image, angle, (0, 0, *frame_size(image.size, angle))))
    region = (37, 51, 237, 160)
    part = np.asarray(frame_region(image, angle, region))
    assert part.shape == (109, 200, 3)
    expected = whole[51:160, 37:237]
    if angle % 90 == 0:
        np.testing.assert_array_equal(part, expected)
        np.testing.assert_array_equal(whole, np.rot90(original[::4, ::4], k=int(angle // 90)))
    else:  # the same sample points, up to float rounding of the warp's offset
        assert np.abs(part.astype(int) - expected).max() <= 2


@pytest.mark.parametrize("angle, box", [(10, [0, 0, 27, 29]), (45, [0, 0, 40, 40])])
def test_zoom_into_the_margin_a_rotation_added_is_an_error(view, angle, box):
    """Found by hypothesis: a box in a corner of a rotated view passes the size check in the
    rotated frame but shows (almost) none of the original."""
    rotated = rotate([view], angle).view
    outcome = execute_tool(ToolCall("image_zoom_in_tool", {"bbox_2d": box}), [view, rotated], TOOLS, MODEL)
    assert outcome.view is None and "blank margin the rotation added" in outcome.error
