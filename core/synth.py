"""A synthetic V*-like visual-search set: large cluttered images with a few small targets.

Each image (default 2048x2048, at least 512x512: `data.synth.image_size`) has a smooth
background, large soft blobs, and dozens of small shapes (24-40 px). A question asks about one
or two targets: the colour of the only shape of a kind, the shape of the only object of a
colour, where one target sits relative to another, or (kind `checks`) the two colours of the
checkered core of the only object of a colour: every object of such an image is larger (48 or
64 px) and carries a core of 8 x 8 checks (3 or 4 px) in a complementary pair (red and cyan, green
and magenta, blue and yellow, black and white), which every pair averages to the same grey once
the image is shrunk, and which a zoom shows. `grid` N places the objects in the cells of an N x N
grid, one per cell at most, centred.
Answers are multiple choice A-D, ground-truth boxes are kept in `extra_info`.

Why it needs zooming at the tiny-cpu pixel budget: the model sees the 2048 px image resized to
448x448 (model.max_pixels = 200704, 256 image tokens), so a 24-40 px target shrinks to 5-9 px,
less than one 14 px patch and a third of one 28 px token: shapes blur into blobs and cannot be
told apart. A zoom box of a few hundred pixels around the target is resized to up to 448 px, so
the target then spans 30-90 px, several tokens.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from core.config import field_problem
from core.data import multiple_choice_prompt, write_samples
from core.images import encode_png
from core.types import Sample

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (30, 160, 60), "blue": (35, 75, 215), "yellow": (240, 205, 25),
    "purple": (135, 50, 175), "orange": (245, 130, 15), "black": (20, 20, 20),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
POSITIONS = ("left", "right", "above", "below")
CHECKS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "red and cyan": ((230, 30, 30), (30, 230, 230)), "green and magenta": ((30, 230, 30), (230, 30, 230)),
    "blue and yellow": ((30, 30, 230), (230, 230, 30)), "black and white": ((30, 30, 30), (230, 230, 230)),
}
"""Colour pairs of the `checks` kind: each pair sums to (260, 260, 260), so every checkered core
averages to the same grey in a shrunk view."""
CORE_CELLS = 8
"""Checks per side of a core's checkerboard: as much of each colour in any half or quadrant,
so the pair's colours cancel wherever the shrinking averages them, and only the fine pattern,
which shrinking removes, tells the pairs apart (`SceneObject.swapped` flips the two colours)."""
KINDS = ("colour", "shape", "position")
"""The default kinds (`checks` is chosen explicitly: it changes every object of its images)."""
LETTERS = "ABCD"
DATA_SOURCE = "synth_vstar"


@dataclass(frozen=True)
class SceneObject:
    """One shape drawn in a synthetic image."""

    shape: str
    color: str
    box: tuple[int, int, int, int]
    """[x1, y1, x2, y2] in original pixels."""
    checks: str | None = None
    """The CHECKS pair of its core (images of kind `checks`), None for a plain shape."""
    swapped: bool = False
    """The core's checkerboard starts with the pair's second colour."""


def _polygon(shape: str, box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    x1, y1, x2, y2 = box
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
    if shape == "square":
        return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    if shape == "triangle":
        return [(cx, y1), (x2, y2), (x1, y2)]
    if shape == "diamond":
        return [(cx, y1), (x2, cy), (cx, y2), (x1, cy)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.42
            angle = -np.pi / 2 + k * np.pi / 5
            points.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
        return points
    if shape == "cross":
        t = r / 3
        return [(cx - t, y1), (cx + t, y1), (cx + t, cy - t), (x2, cy - t), (x2, cy + t),
                (cx + t, cy + t), (cx + t, y2), (cx - t, y2), (cx - t, cy + t), (x1, cy + t),
                (x1, cy - t), (cx - t, cy - t)]
    raise ValueError(f"unknown shape {shape}")


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    if obj.shape == "circle":
        draw.ellipse(obj.box, fill=COLORS[obj.color])
    else:
        draw.polygon(_polygon(obj.shape, obj.box), fill=COLORS[obj.color])
    if obj.checks is not None:  # a square core, half the side: an 8 x 8 checkerboard of the pair
        x1, y1, x2, y2 = obj.box
        quarter = (x2 - x1) // 4
        width = (x2 - x1 - 2 * quarter) // CORE_CELLS
        pair = CHECKS[obj.checks][::-1] if obj.swapped else CHECKS[obj.checks]
        for row in range(CORE_CELLS):
            for column in range(CORE_CELLS):
                x, y = x1 + quarter + column * width, y1 + quarter + row * width
                draw.rectangle((x, y, x + width - 1, y + width - 1), fill=pair[(row + column) % 2])


def _background(rng: random.Random, size: int) -> Image.Image:
    base = np.array([rng.randint(90, 170) for _ in range(3)], dtype=np.float32)
    tilt = np.array([rng.uniform(-60, 60) for _ in range(3)], dtype=np.float32)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    horizontal = rng.random() < 0.5
    grad = ramp[None, :, None] if horizontal else ramp[:, None, None]
    pixels = np.clip(base + grad * tilt, 0, 255).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(pixels, (size, size, 3)).copy())
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(6, 12)):  # large soft blobs: clutter that is visible when small
        x, y, r = rng.randrange(size), rng.randrange(size), rng.randint(size // 16, size // 5)
        tone = tuple(rng.randint(60, 200) for _ in range(3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tone)
    return image.filter(ImageFilter.GaussianBlur(radius=size / 128))


def _place(rng: random.Random, size: int, taken: list[tuple[int, int, int, int]],
           side: int, grid: int) -> tuple[int, int, int, int]:
    """A free place for an object of `side` px: anywhere off the border and apart from the others
    (grid 0), or centred in a free cell of the grid."""
    if grid:
        cell = size / grid
        centres = [(round((c + 0.5) * cell), round((r + 0.5) * cell))
                   for r in range(grid) for c in range(grid)]
        free = [(x, y) for x, y in centres
                if not any(t[0] <= x <= t[2] and t[1] <= y <= t[3] for t in taken)]
        if not free:
            raise RuntimeError(f"no free cell for an object in a {grid}x{grid} grid; use a larger grid")
        x, y = rng.choice(free)
        box = (x - side // 2, y - side // 2, x - side // 2 + side, y - side // 2 + side)
        taken.append(box)
        return box
    margin = side
    for _ in range(1000):
        x, y = rng.randrange(margin, size - margin - side), rng.randrange(margin, size - margin - side)
        box = (x, y, x + side, y + side)
        gap = side
        if all(box[2] + gap < t[0] or t[2] + gap < box[0] or box[3] + gap < t[1]
               or t[3] + gap < box[1] for t in taken):
            taken.append(box)
            return box
    raise RuntimeError("no free place for an object; use a larger image_size")


def _options(rng: random.Random, correct: str, pool: tuple[str, ...] | list[str]
             ) -> tuple[list[str], str]:
    others = rng.sample([p for p in pool if p != correct], 3)
    choices = others + [correct]
    rng.shuffle(choices)
    return choices, LETTERS[choices.index(correct)]


def _check(argument: str, value: int, field: str) -> None:
    """Refuse an argument outside the domain of the config field data.synth.<field> it stands for."""
    problem = field_problem(f"data.synth.{field}", value)
    if problem:
        raise ValueError(f"{argument}={value!r}: {problem} (as data.synth.{field})")


def make_scene(index: int, size: int, seed: int, split: str, kinds: Sequence[str] = KINDS,
               clutter: float = 1.0, grid: int = 0) -> tuple[Image.Image, Sample, list[SceneObject]]:
    """One synthetic row before encoding: its image, the row (image bytes left empty) and every
    object drawn, targets first; a pure function of its arguments.

    `kinds` are the question kinds drawn from, `clutter` scales the number of distractors (1 =
    30-60 on a 2048 px image, as many per area on others, at least 4), `grid` N > 0 centres the
    objects in the cells of an N x N grid (0: anywhere).
    """
    _check("size", size, "image_size")
    _check("grid", grid, "grid")
    rng = random.Random(f"{seed}:{split}:{index}")
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    taken: list[tuple[int, int, int, int]] = []
    kind = rng.choice(list(kinds))
    def place() -> tuple[int, int, int, int]:  # checkered: 48 or 64 px, for checks of 3 or 4 px
        side = 16 * rng.randint(3, 4) if kind == "checks" else rng.randint(24, 40)
        return _place(rng, size, taken, side, grid)

    def core() -> tuple[str | None, bool]:
        return (rng.choice(list(CHECKS)), rng.random() < 0.5) if kind == "checks" else (None, False)

    target_shape, target_color = rng.choice(SHAPES), rng.choice(list(COLORS))
    targets = [SceneObject(target_shape, target_color, place(), *core())]
    if kind == "position":
        second = (rng.choice([s for s in SHAPES if s != target_shape]),
                  rng.choice([c for c in COLORS if c != target_color]))
        targets.append(SceneObject(*second, place()))
    # Distractors never repeat what makes a target unique, so the question has one answer.
    target_shapes = {t.shape for t in targets}
    target_colors = {t.color for t in targets}
    density = (size / 2048) ** 2  # 30-60 distractors on a 2048 px image, as many per area on others
    distractors = []
    for _ in range(max(4, round(rng.randint(30, 60) * density * clutter))):
        if kind in ("shape", "checks"):
            shape, color = rng.choice(SHAPES), rng.choice([c for c in COLORS if c not in target_colors])
        else:
            shape, color = rng.choice([s for s in SHAPES if s not in target_shapes]), rng.choice(list(COLORS))
        distractors.append(SceneObject(shape, color, place(), *core()))
    for obj in [*distractors, *targets]:
        _draw(draw, obj)

    target = targets[0]
    if kind == "colour":
        question = f"What is the colour of the {target.shape}?"
        choices, answer = _options(rng, target.color, list(COLORS))
    elif kind == "shape":
        question = f"What shape is the {target.color} object?"
        choices, answer = _options(rng, target.shape, SHAPES)
    elif kind == "checks":
        question = f"What colours are the checks on the {target.color} object?"
        choices, answer = _options(rng, target.checks, list(CHECKS))
    else:
        first, second = targets
        b1, b2 = first.box, second.box
        dx, dy = (b1[0] + b1[2] - b2[0] - b2[2]) / 2, (b1[1] + b1[3] - b2[1] - b2[3]) / 2
        if abs(dx) >= abs(dy):
            relation = "left" if dx < 0 else "right"
        else:
            relation = "above" if dy < 0 else "below"
        question = f"Where is the {first.color} {first.shape} relative to the {second.color} {second.shape}?"
        choices, answer = _options(rng, relation, POSITIONS)
    sample = Sample(
        id=f"{split}:{index}",
        data_source=DATA_SOURCE,
        messages=[{"role": "user", "content": multiple_choice_prompt(question, choices)}],
        images=[],
        question=question,
        answer=answer,
        choices=choices,
        gt_boxes=[[float(v) for v in t.box] for t in targets],
        env_name="visual_toolbox",
        ability="visual_search",
        reward_style="rule",
        extra={"category": kind, "split": split},
    )
    return image, sample, targets + distractors


def make_sample(index: int, size: int, seed: int, split: str, kinds: Sequence[str] = KINDS,
                clutter: float = 1.0, grid: int = 0) -> Sample:
    """One synthetic visual-search row; a pure function of its arguments (see `make_scene`)."""
    image, sample, _ = make_scene(index, size, seed, split, kinds, clutter, grid)
    return dataclasses.replace(sample, images=[encode_png(image)])


def write_synthetic(out_dir: str | Path, n_train: int, n_test: int, size: int,
                    seed: int, kinds: Sequence[str] = KINDS, clutter: float = 1.0,
                    grid: int = 0) -> dict[str, Path]:
    """Write train.parquet and test.parquet in the DeepEyes release format; returns their paths."""
    for argument, value, field in (("n_train", n_train, "n_train"), ("n_test", n_test, "n_test"),
                                   ("size", size, "image_size"), ("seed", seed, "seed")):
        _check(argument, value, field)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("test", n_test)):
        samples = [make_sample(i, size, seed, split, kinds, clutter, grid) for i in range(n)]
        paths[split] = write_samples(samples, out / f"{split}.parquet")
    return paths
