import io

import numpy as np
import pytest
from PIL import Image

from core.config import load_config
from core.images import smart_resize
from core.synth import KINDS, LETTERS, make_sample, write_synthetic


def test_generator_is_deterministic():
    a, b = make_sample(3, 512, 1, "train"), make_sample(3, 512, 1, "train")
    assert a == b
    assert make_sample(3, 512, 2, "train").images != a.images


def test_rows_are_well_formed_multiple_choice():
    for i in range(12):
        s = make_sample(i, 512, 0, "train")
        assert len(s.choices) == 4 and s.answer in LETTERS
        assert s.messages[0]["content"].count("<image>") == 1 == len(s.images)
        assert s.extra["category"] in {"colour", "shape", "position"}
        assert len(s.gt_boxes) == (2 if s.extra["category"] == "position" else 1)
        assert f"{s.answer}. {s.choices[LETTERS.index(s.answer)]}" in s.messages[0]["content"]


def test_targets_are_smaller_than_a_patch_at_the_default_budget():
    """The property that makes the set need zooming: at tiny-cpu's pixel budget a target
    shrinks below one 14 px vision patch, while a 300 px zoom box shows it at >= 28 px."""
    cfg = load_config("tiny-cpu")
    size = cfg.data.synth.image_size
    s = make_sample(0, size, 0, "train")
    width, height = Image.open(io.BytesIO(s.images[0])).size
    seen_h, seen_w = smart_resize(height, width, cfg.model.min_pixels, cfg.model.max_pixels)
    for x1, _, x2, _ in s.gt_boxes:
        assert 24 <= x2 - x1 <= 40
        assert (x2 - x1) * seen_w / width < 14
        crop_h, crop_w = smart_resize(300, 300, cfg.model.min_pixels, cfg.model.max_pixels)
        assert (x2 - x1) * crop_w / 300 >= 28


def test_arguments_outside_the_data_synth_domains_are_refused_up_front(tmp_path):
    """The domains of data.synth.* (below 512 px the objects find no free place)."""
    with pytest.raises(ValueError, match=r"size=64: must be >= 512 \(as data.synth.image_size\)"):
        make_sample(0, 64, 0, "train")
    for args, message in (((-1, 1, 512, 0), "n_train=-1: must be >= 1"),
                          ((1, 0, 512, 0), "n_test=0: must be >= 1"),
                          ((1, 1, 300, 0), "size=300: must be >= 512"),
                          ((1, 1, 512, -1), "seed=-1: must be >= 0")):
        with pytest.raises(ValueError, match=message):
            write_synthetic(tmp_path / "out", *args)
    assert not (tmp_path / "out").exists()


def test_kinds_and_clutter_choose_the_questions_and_the_distractors():
    from core.synth import make_scene

    assert make_sample(5, 1024, 0, "train") == make_sample(5, 1024, 0, "train", KINDS, 1.0)
    for i in range(3):
        _, sample, objects = make_scene(i, 1536, 0, "test", ["shape"], 0.25)
        assert sample.extra["category"] == "shape"
        assert 5 <= len(objects) <= 9  # the target and 4-8 distractors
        target = objects[0]
        assert [list(map(float, target.box))] == sample.gt_boxes
        assert sum(o.color == target.color for o in objects) == 1  # the only object of its colour
        assert sample.choices["ABCD".index(sample.answer)] == target.shape


def test_checks_and_grid_place_one_checkered_object_per_cell():
    from core.synth import CHECKS, make_scene

    shape_kind = ("test", ["shape"], 0.25)
    assert make_sample(4, 1536, 0, *shape_kind) == make_sample(4, 1536, 0, *shape_kind, 0)  # 0: no grid
    for i in range(3):
        _, sample, objects = make_scene(i, 1536, 0, "test", ["checks"], 0.25, 7)
        target = objects[0]
        assert sample.extra["category"] == "checks"
        assert sorted(sample.choices) == sorted(CHECKS)
        assert sample.choices["ABCD".index(sample.answer)] == target.checks
        assert sum(o.color == target.color for o in objects) == 1
        cells = set()
        for obj in objects:
            x1, y1, x2, y2 = obj.box
            assert obj.checks in CHECKS and 48 <= x2 - x1 <= 64
            column, row = (x1 + x2) / 2 / (1536 / 7), (y1 + y2) / 2 / (1536 / 7)
            assert abs(column % 1 - 0.5) < 0.01 and abs(row % 1 - 0.5) < 0.01  # centred in its cell
            cells.add((int(column), int(row)))
        assert len(cells) == len(objects)  # one per cell
    with pytest.raises(ValueError, match=r"grid=-1: must be >= 0 \(as data.synth.grid\)"):
        make_scene(0, 1536, 0, "test", ["checks"], 0.25, -1)


def test_mini_answers_are_grey_at_full_view_and_readable_in_a_zoom():
    """The deepeyes-mini split: in the full view every checkered core averages to the same grey
    (the answer cannot be read; the object's colour, where to look, can), while the base's zoom on
    the object (its grid cell's middle, cut by the zoom tool) shows the checks' own colours."""
    from core.config import ToolsConfig
    from core.synth import CHECKS, make_scene
    from tools import execute_tool, initial_view, parse_tool_call
    from zoomrl.tiny_base import zoom_box, zoom_call

    cfg = load_config("deepeyes-mini")
    ci = load_config("deepeyes-mini-ci")
    assert (ci.data.synth, ci.model.min_pixels, ci.model.max_pixels) == (
        cfg.data.synth, cfg.model.min_pixels, cfg.model.max_pixels)
    s = cfg.data.synth
    for i in range(3):
        image, sample, objects = make_scene(i, s.image_size, s.seed, "test", list(s.kinds), s.clutter, s.grid)
        view = initial_view(np.asarray(image), cfg.model, max_decoded_pixels=10**9)
        assert view.width * view.height <= cfg.model.max_pixels
        for obj in objects[:3]:
            sx = view.scale()[0]
            centre = [round((v1 + v2) / 2 / sx) for v1, v2 in (obj.box[0::2], obj.box[1::2])]
            core = view.pixels[centre[1] - 1:centre[1] + 1, centre[0] - 1:centre[0] + 1].reshape(-1, 3)
            assert np.ptp(core.astype(int).mean(0)) < 40  # greyish, whichever the pair
            call = parse_tool_call(zoom_call(zoom_box(obj, view, s.grid)))
            crop = execute_tool(call, [view], ToolsConfig(), cfg.model).view
            colours = {tuple(int(v) for v in px) for px in crop.pixels.reshape(-1, 3)}
            first, second = CHECKS[obj.checks]
            near = [min(np.abs(np.subtract(c, target)).max() for c in colours) for target in (first, second)]
            assert max(near) < 30  # both colours of the pair are there, nearly pure
