"""pointing: can the tiny base's decoder learn to point at an object, and where does it fail?

The pointing stage of zoomrl/tiny_base.py alone, from the base's initial weights: the full view,
"Zoom in on an object." -> the zoom call on a random object, with the loss on the box's numbers
only (the rest of the call is in the sequence, out of the loss). The full view's image tokens come
from one of three sources (`--vision`):

- tower: the real vision tower, trained with the rest; with `--dense`, a linear head on its output
  tokens also learns each cell's colour (or empty), row and column, so that the tokens provably
  carry where each object is and what colour it has;
- object-codes: the tower's output replaced by hand-made tokens: a fixed random vector per grid
  cell where an object sits, zero on empty cells. Where the objects are is given, one linear map
  away; the decoder only has to find the 5-9 object tokens among the view's 49 and read them;
- all-codes: every image token carries the code of the pointed object's cell: nothing to find.

`--spread R --shrink-steps N` (object-codes) is a curriculum between the two: each object's code
is also written on the cells within R cells of it (summed where neighbourhoods overlap), and R
shrinks linearly to 0 over the first N steps.

Figures: the loss per step; the teacher-forced log-loss of the box's first two numbers (x1, y1)
on held-out scenes against log(grid), what a box on a random cell scores, and against the entropy
of a box on a random object. A number's log-loss is that of its first token (a few view
coordinates are two tokens). Only the numbers are trained, so the probe does not generate whole
calls; the log-losses say what sampled boxes would do.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import tempfile
import time
from collections import Counter

import torch

from bench.common import Result
from core.config import Config, SynthConfig, TinyBaseConfig
from core.synth import COLORS
from core.tiny import _build_model, _build_processor, _train_tokenizer, as_dataclass
from learner.batching import TrainItem, collate
from learner.model import load_policy, token_logprobs
from zoomrl.tiny_base import Pretraining, Scene, base_corpus, grid_cell, token_classes

NAME = "pointing"
PRESET = "deepeyes-mini"
SOURCES = ("tower", "object-codes", "all-codes")
HELD_OUT = 32
"""Held-out scenes (split 'test') the x1 and y1 log-losses are measured on."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    parser.add_argument("--batch", type=int, default=16, help="pointings per step (default 16)")
    parser.add_argument("--vision", choices=SOURCES, default="tower",
                        help="where the full view's image tokens come from (default tower)")
    parser.add_argument("--dense", action="store_true",
                        help="tower only: a linear head on its tokens learns colour, row and column")
    parser.add_argument("--spread", type=int, default=0,
                        help="object-codes only: write each object's code within this many cells of it")
    parser.add_argument("--shrink-steps", type=int, default=1,
                        help="steps over which --spread shrinks to 0 (default 1)")
    parser.add_argument("--scenes", type=int, default=None,
                        help="training scenes (default model.base.images)")


def cell_of(obj, scene: Scene) -> int:
    """Index (row-major) of the grid cell, and so of the full view's image token, `obj` sits in."""
    column, row = grid_cell(obj, scene.view, scene.grid)
    return row * scene.grid + column


class HandMadeTokens:
    """A forward hook that replaces the vision tower's output by `object-codes` or `all-codes`."""

    def __init__(self, source: str, grid: int, hidden: int) -> None:
        generator = torch.Generator().manual_seed(0)
        # scaled to the trained tower's token norms (about 40-60)
        self.codes = 3 * torch.randn(grid * grid, hidden, generator=generator)
        self.source = source
        self.grid = grid
        self.spread = 0
        """object-codes: cells (Chebyshev distance) around an object that carry its code too."""
        self.pointings: list[tuple[Scene, object]] = []
        """(scene, pointed object) of each full view in the next forward, in order."""

    def __call__(self, module, args, output):
        tokens = []
        for scene, obj in self.pointings:
            if self.source == "all-codes":
                tokens.append(self.codes[cell_of(obj, scene)].expand_as(self.codes))
            else:
                cells = torch.arange(len(self.codes))
                rows, columns = cells // self.grid, cells % self.grid
                view = torch.zeros_like(self.codes)
                for cell in (cell_of(o, scene) for o in scene.objects):
                    near = torch.maximum((rows - cell // self.grid).abs(), (columns - cell % self.grid).abs())
                    view[near <= self.spread] += self.codes[cell]
                tokens.append(view)
        output.pooler_output = torch.cat(tokens)
        return output


def without_original(scene: Scene) -> Scene:
    """`scene` with its view's original image dropped (the full view's pixels stay)."""
    return dataclasses.replace(scene, view=dataclasses.replace(scene.view, source=b""))


def cell_labels(scene: Scene) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image token of the full view: its object's colour index (len(COLORS) when empty), row, column."""
    cells = scene.grid**2
    colour = torch.full((cells,), len(COLORS))
    for obj in scene.objects:
        colour[cell_of(obj, scene)] = list(COLORS).index(obj.color)
    return colour, torch.arange(cells) // scene.grid, torch.arange(cells) % scene.grid


def random_object_entropy(scene: Scene) -> tuple[float, float]:
    """Entropy (nats) of x1, and of y1 given x1, when the box goes to a uniformly random object."""
    columns = Counter(cell_of(o, scene) % scene.grid for o in scene.objects)
    n = len(scene.objects)
    x1 = -sum(k / n * math.log(k / n) for k in columns.values())
    y1 = sum(k / n * math.log(k) for k in columns.values())  # rows in the chosen column, uniform
    return x1, y1


def dense_loss(head: torch.nn.Linear, tokens: torch.Tensor, scenes: list[Scene]) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of `head` on the vision tower's `tokens` of the scenes' full views (in order)
    against each cell's colour (or empty), row and column; and the head's accuracy on each."""
    labels = [torch.cat(part) for part in zip(*map(cell_labels, scenes), strict=True)]
    parts = torch.split(head(tokens), [len(COLORS) + 1, scenes[0].grid, scenes[0].grid], dim=-1)
    loss = sum(torch.nn.functional.cross_entropy(p, y) for p, y in zip(parts, labels, strict=True))
    accuracy = {name: float((p.argmax(-1) == y).float().mean())
                for name, p, y in zip(("colour", "row", "column"), parts, labels, strict=True)}
    return loss, accuracy


def box_numbers(batch, numbers: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]]:
    """The box's number tokens in the packed batch (a (1, L) 0/1 mask) and, per sequence, the
    positions of the first token of each of its four numbers. The box is the call's last four
    numbers ("bbox_2d" holds a digit too)."""
    ids, seq = batch.input_ids[0], batch.seq_index[0]
    is_number = torch.isin(ids, numbers) & (batch.loss_mask[0] > 0)
    starts = is_number & ~torch.cat([torch.zeros(1, dtype=torch.bool), is_number[:-1]])
    mask = torch.zeros_like(batch.loss_mask)
    firsts = []
    for index in range(int(seq.max()) + 1):
        box = (starts & (seq == index)).nonzero().flatten()[-4:].tolist()
        end = int((seq == index).nonzero().max()) + 1
        mask[0, box[0]:end] = is_number[box[0]:end].float()
        firsts.append(box)
    return mask, firsts


def run(args: argparse.Namespace, cfg: Config) -> Result:
    if args.dense and args.vision != "tower":
        raise ValueError("--dense trains a head on the vision tower's tokens: it needs --vision tower")
    if args.spread and args.vision != "object-codes":
        raise ValueError("--spread writes each object's code around it: it needs --vision object-codes")
    start = time.perf_counter()
    base = as_dataclass(cfg.model.base, TinyBaseConfig)
    synth = as_dataclass(cfg.data.synth, SynthConfig)
    tokenizer = _train_tokenizer(base.dims, base_corpus(cfg.model, synth))
    processor = _build_processor(tokenizer, cfg.model)
    with tempfile.TemporaryDirectory() as initial:
        _build_model(base.dims, tokenizer).save_pretrained(initial)
        model = load_policy(initial)
    data = Pretraining(tokenizer, cfg.model)
    # pointing never crops: drop each original (7 MB at 1536 px) so that --scenes can be thousands
    scenes = [without_original(data.scene(i, synth, base.seed)) for i in range(args.scenes or base.images)]
    held_out = [without_original(data.scene(i, synth, synth.seed, "test")) for i in range(HELD_OUT)]
    numbers = torch.tensor(sorted(token_classes(tokenizer)["coordinates"]))
    hidden = model.config.text_config.hidden_size
    hand_made = None
    if args.vision != "tower":
        hand_made = HandMadeTokens(args.vision, synth.grid, hidden)
        model.model.visual.register_forward_hook(hand_made)
    params = list(model.parameters())
    if args.dense:  # the head reads the tower's tokens of the step's own forward, kept by a hook
        head = torch.nn.Linear(hidden, len(COLORS) + 1 + 2 * synth.grid)
        params += list(head.parameters())
        tower_tokens = {}
        model.model.visual.register_forward_hook(
            lambda module, args, output: tower_tokens.update(last=output.pooler_output))
    optimizer = torch.optim.AdamW(params, lr=base.lr, weight_decay=0.01)
    rng = random.Random(f"pointing-probe:{base.seed}")

    def forward(pointings: list[tuple[Scene, object]]):
        if hand_made is not None:
            hand_made.pointings = pointings
        items = [data.pointing(scene, obj) for scene, obj in pointings]
        batch = collate([TrainItem(trajectory=t, advantage=0.0, name=t.sample_id) for t in items],
                        processor.image_processor, model)
        logprobs, _ = token_logprobs(model, batch, temperature=1.0, with_entropy=False)
        return batch, logprobs

    losses, dense_accuracy = [], {}
    warmup = max(1, args.steps // 20)
    for step in range(args.steps):
        pointings = [(scene, rng.choice(scene.objects)) for scene in rng.choices(scenes, k=args.batch)]
        if hand_made is not None:
            hand_made.spread = round(args.spread * max(0.0, 1 - step / args.shrink_steps))
        batch, logprobs = forward(pointings)
        on_numbers, _ = box_numbers(batch, numbers)
        loss = -(logprobs * on_numbers).sum() / on_numbers.sum()
        losses.append(loss.item())
        if args.dense:
            dense, dense_accuracy = dense_loss(head, tower_tokens["last"], [s for s, _ in pointings])
            loss = loss + dense
        for group in optimizer.param_groups:
            group["lr"] = base.lr * min(1.0, (step + 1) / warmup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"pointing [{args.vision}{' dense' if args.dense else ''}] step {step} loss on the "
                  f"numbers {losses[-1]:.3f} {dense_accuracy or ''} ({time.perf_counter() - start:.0f}s)",
                  flush=True)

    if hand_made is not None:
        hand_made.spread = 0
    with torch.no_grad():
        pointed = [(scene, scene.objects[0]) for scene in held_out]
        batch, logprobs = forward(pointed)
        _, boxes = box_numbers(batch, numbers)
        held = [(-float(logprobs[0, box[0]]), -float(logprobs[0, box[1]])) for box in boxes]
    floors = [random_object_entropy(scene) for scene in held_out]
    figures = {
        "vision": args.vision, "dense": args.dense, "steps": args.steps, "batch": args.batch,
        "spread": args.spread, "shrink_steps": args.shrink_steps if args.spread else 0,
        "scenes": len(scenes), "loss_first": losses[:10], "loss_last": losses[-10:],
        "loss_every_10": losses[::10],
        "held_out": HELD_OUT,
        "x1_nll": sum(x for x, _ in held) / len(held), "y1_nll": sum(y for _, y in held) / len(held),
        "random_cell_nll": math.log(synth.grid),
        "random_object_x1_entropy": sum(x for x, _ in floors) / len(floors),
        "random_object_y1_entropy": sum(y for _, y in floors) / len(floors),
        "dense_accuracy": dense_accuracy,
    }
    what = args.vision + (" dense" if args.dense else "") + (f" spread {args.spread}" if args.spread else "")
    summary = (f"pointing [{what}], {args.steps} steps: held-out "
               f"x1 {figures['x1_nll']:.2f} / y1 {figures['y1_nll']:.2f} nats (random cell "
               f"{figures['random_cell_nll']:.2f}; random object {figures['random_object_x1_entropy']:.2f} "
               f"/ {figures['random_object_y1_entropy']:.2f})")
    return Result(figures=figures, summary=summary)
