"""`model.path: tiny-base`: a tiny Qwen2.5-VL pretrained to stand where Qwen2.5-VL-7B stands before RL.

DeepEyes starts RL from a model that already writes its format, reads what it is shown at usable
resolution and can put a box on an object, but does not yet know where to look. This module
builds that start on a CPU, once, and caches it like `tiny` (`ensure_base`), as a real
`Qwen2_5_VLForConditionalGeneration` folder that vLLM and the learner load like any other.

The recipe (deterministic: `model.base.seed` fixes the data, `model.base.dims.seed` the initial
weights; every size in `model.base`):
1. Tokenizer: byte-level BPE as for `tiny`, trained on its corpus plus the exact conversation
   text the rollout renders (system prompt with the zoom tool, instruction, tool response) and
   the view coordinates 0..view side, so the prompt is short and each coordinate one token.
2. Data: `model.base.images` scenes of the synthetic generator (`core.synth.make_scene`, the
   run's `data.synth` image size, kinds, clutter and grid) from split 'base', never 'train' or
   'test'. Every sequence is rendered by the rollout's own code (`actors.prompt`,
   `actors.sequence`) and every crop cut by the zoom tool itself (`tools.execute_tool` on the
   parsed call), so the supervised text is token for token what the policy writes and reads.
3. Three stages (`stage_mix`), teacher forcing, token-mean cross-entropy on the assistant tokens
   only, AdamW (warm-up, the peak lr through stages 1-2, cosine decay over stage 3):
   1. `caption_steps` of captions only (`captions_per_step`): the zoom on a random object,
      "What is in the image?" -> "I see a green object with red and cyan checks." (`describe`).
      Perception first and alone: mixed with the rest from step 0 its words were ~2% of the
      token-mean loss and were not learned;
   2. `pointing_steps` of captions and pointings (`pointings_per_step`): the full view, "Zoom in
      on an object." -> the zoom turn of the trajectories below, its box on a random object;
   3. the rest: captions, pointings and DeepEyes trajectories (`trajectories_per_step`), one of
      four kinds drawn per trajectory:
     * search (40%): `<think>` + a zoom call whose box goes to an object drawn uniformly from ALL
       objects of the image, not the one asked about; after the crop: `<think>` + what it sees
       (`describe`) + `</think>` + `<answer>`;
     * read (30%): the same, zoomed on the asked-about object, but the loss covers only the
       turn after the crop: it teaches reading the target when it is visible, never where it is;
     * direct (15%): tools offered, no call: `<think>` + `<answer>` from the full view;
     * no-tools (15%): the `tools.enabled=[]` prompt, `<think>` + `<answer>` from the full view.
     The answer is always the right option's text (which the reward rules read as that option):
     when the crop shows the target the answer is in it, otherwise it is a guess from the full
     view, so the base learns to use a crop when it holds the target and to guess otherwise.
   The objects sit one per cell of the `data.synth.grid` (7 x 7 on deepeyes-mini: a cell is one
   image token of the full view), and every supervised zoom box is a quarter cell (BOX_CELLS) at
   the middle of the object's cell (`zoom_box`): pointing is a choice among 7 values per axis. The build log
   reports the loss per sequence kind and per token class (`loss_report`).

What the recipe aims the base to get: the format (think, one valid zoom call, answer; or think,
answer), boxes on objects of the full view, the colour and the hidden detail (the checks' pair on
deepeyes-mini) of a zoomed object, and answering from a crop that shows the target. What it must
not get: which object a question is about (its boxes are uncorrelated with the question), so on
held-out questions it zooms on a random object and is near chance unless it happens on the
target; RL has the visual search to learn. Neither does it get more than one zoom per trajectory,
nor reasoning in the think text beyond naming what it sees.

Why the grid and the checks (measured with probes of this module's pieces, one kind of sequence
at a time, 2-core machine): pointing anywhere (boxes of 12 view px on a 4 px grid, 49 values per
axis) stayed at 2.7-2.9 nats per coordinate after 400 steps, greedy IoU 0.02, with or without a
background that encodes the position in its colour and number embeddings initialised in order;
pointing at grid cells (7 values per axis) reaches 0.6-0.7 nats per coordinate (the floor of
choosing among 5-9 objects is about 0.5) in 250-300 steps, greedy boxes on an object's very cell
17.5% after 300 steps. The first answer kind tried, shape, stays at chance in crops where the
object spans 2-4 patches. A linear read-out of the answer from the 8 x 8 view pixels around each
object (1081 objects, a quarter held out): stripes of 3 px in alternating pairs 99.6% (an odd
count tints one side); a 4 x 4 checkerboard 29% linear but 96% from pixel-colour products; 6 x 6
34%; the 8 x 8 checkerboard 27% linear and 26% from products, chance 25%: no read-out the probe
could find. What a zoom shows of it is a 4.6-6 px texture, which the vision tower, trained from
scratch, reads slowly: captions alone, 500 steps, colour 52.5% and checks 27.5% with whole-cell
boxes; 75% and 22.5% with middle-half boxes and a wider, deeper vision tower (128 x 4); a full
build with middle-half boxes (1450 steps) colour 100%, checks 25%. A quarter-cell box, which the
tool enlarges 3x so that a check is about one patch: captions alone, colour 97.5% and checks 100%
after 500 steps (perception loss 0.01 from step 250).

Status, measured (`python -m zoomrl.tiny_base --config deepeyes-mini`, BASE_FORMAT 4, 1100 steps,
820-1012 s on the shared 2-core machine, then `measure` on 40 held-out test scenes): colour 100%,
checks 100%, pointing turns the zoom tool executes 100%, greedy boxes on an object's very box
12.5-20%. `zoomrl eval --config deepeyes-mini` (64 held-out questions, greedy): 31.2-34.4% with
the zoom tool (one zoom per trajectory, no format error), 17.2-23.4% with `tools.enabled=[]`;
chance is 25%.

**Not a base RL can start from: the base does not point at objects** (measured 2026-12-04).
Boxes sampled at temperature 1, as RL samples them, land on an object 13.8% of the time, and
14.6% of the grid's cells hold one (`sampled_hits` against `chance`): it picks a random cell. A
40-step GRPO run from it (`python -m bench deepeyes_mini`, conditional) zoomed on the target in
none of the 57 zooms of its logged trajectories; held-out accuracy 34.4% -> 32.8% (step 10) -> 0%
(steps 20, 30: every answer "from the whole image", a colour pair no option has) -> 23.4% (40).
Sampled answers were no option at all in 60-70% of trajectories: the base's guesses (the right
option's text, which it cannot see) taught it a spread over colour words.

Why, measured by `python -m bench pointing` (the pointing stage alone from this recipe's initial
weights, loss on the box's numbers, 300 steps; figures in bench/README.md): the decoder does not
learn to find a few image tokens among the view's 49. When every image token carries a code of the
pointed object's cell, the numbers' loss is 0.04 nats a token by step 100 and the held-out box's
first two numbers end at 0.01 nats each; when only the object cells carry codes (zero elsewhere:
where the objects are is one linear map away) they end at 1.97, a random cell's 1.95, where a box
on a random object would score 1.39 and 0.56 (an earlier probe of 1500 such steps barely moved).
The real vision tower, with a linear head that reads each cell's colour (99.7%) and column (100%)
from its output, leaves the box at 2.03 and 1.98. The learner's gradients equal Hugging Face's
eager attention's to 1e-5 (no packing bug). Earlier probes found the same wall from other sides:
the decoder's rotary base (`rope_theta` 20 makes the coordinates valid but not on objects), an
address-tinted background, larger objects, longer training (1200 steps), and teaching layer 0's
attention to look at the objects (it learns to look, 1.00 of its mass, but not to read where it
looked). A shrinking curriculum of the codes moves it a little on scenes never seen (x1 1.69, y1
1.34 after 1200 steps on 2000 scenes); its better figures on the recipe's 320 scenes were
memorised. Issue 15 is blocked on this (2026-12-05): bench/README.md, "Why the tiny base cannot
point", says what would unblock it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core.config import ConfigError, ModelConfig, SynthConfig, TinyBaseConfig, ToolsConfig
from core.synth import CHECKS, COLORS, POSITIONS, SHAPES, SceneObject, make_scene
from core.tiny import (
    TINY_FORMAT,
    _build_model,
    _build_processor,
    _tokenizer_corpus,
    _train_tokenizer,
    as_dataclass,
    save_folder,
)
from core.types import Sample
from tools.view import ImageView

BASE_FORMAT = 4  # bump when the recipe changes (invalidates cached bases)
SPLIT = "base"
"""The generator split the base's scenes come from (RL trains on 'train', evaluates on 'test')."""
BOX_CELLS = 0.25
"""Side of a supervised zoom box, in grid cells: a quarter cell (7 view px = 55 original px on
deepeyes-mini) holds a checkered core whole, and the tool enlarges it 3x (to 168 px), so its
3-4 px checks come out at 9-12 px, about one vision patch each."""
MIX = (("search", 0.4), ("read", 0.3), ("direct", 0.15), ("no_tools", 0.15))
"""Trajectory kinds and their shares (see the module docstring)."""
CAPTION_QUESTION = "What is in the image?"
POINTING_REQUEST = "Zoom in on an object."
ZOOM_THOUGHT = "<think>The object is small, so I zoom in on the region to see it clearly.</think>"
DIRECT_THOUGHT = "<think>I answer from the whole image.</think>"
SAMPLED_POINTINGS = 4
"""Pointing turns `measure` samples per scene."""


def base_model_dir(model_cfg: ModelConfig, synth: SynthConfig) -> Path:
    """Cache folder of the base for these settings (content-addressed by everything it depends on)."""
    base = as_dataclass(model_cfg.base, TinyBaseConfig)
    key = json.dumps({"format": [TINY_FORMAT, BASE_FORMAT], "base": dataclasses.asdict(base),
                      "pixels": [model_cfg.min_pixels, model_cfg.max_pixels],
                      "scenes": [synth.image_size, list(synth.kinds), synth.clutter, synth.grid]},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(model_cfg.cache_dir).expanduser() / "models" / f"tiny-base-qwen2.5-vl-{digest}"


def ensure_base(model_cfg: ModelConfig, synth: SynthConfig, log: Callable[[str], None] = print) -> Path:
    """The base's folder, built (once per cache) when missing."""
    if not synth.grid:
        raise ConfigError("model.path=tiny-base needs data.synth.grid > 0: the base's zoom boxes are "
                          "set by the grid's cells (the preset deepeyes-mini sets 7)")
    out_dir = base_model_dir(model_cfg, synth)
    if not (out_dir / "config.json").is_file():
        log(f"building the tiny base (once, cached at {out_dir}); recipe: zoomrl/tiny_base.py")
        build_base(model_cfg, synth, out_dir, log=log)
    return out_dir


def _view_side(model_cfg: ModelConfig, synth: SynthConfig) -> int:
    from core.images import smart_resize

    return max(smart_resize(synth.image_size, synth.image_size, model_cfg.min_pixels,
                            model_cfg.max_pixels))


def base_corpus(model_cfg: ModelConfig, synth: SynthConfig) -> list[str]:
    """Tokenizer corpus: the tiny corpus, the rendered conversation, the supervised phrases and
    every view coordinate (repeated, so each becomes one token)."""
    from actors.prompt import render_prompt, tool_response
    from core.synth import make_sample

    sample = make_sample(0, 512, 0, SPLIT)
    lines = _tokenizer_corpus()
    lines += [render_prompt(sample, ["image_zoom_in_tool"]), render_prompt(sample, []),
              tool_response(True), ZOOM_THOUGHT, DIRECT_THOUGHT, CAPTION_QUESTION, POINTING_REQUEST]
    lines += [describe(SceneObject(shape, colour, (0, 0, 1, 1), checks))
              for colour in COLORS for shape in SHAPES for checks in [None, *CHECKS]]
    # every answer word one token: split ("c", "ro", "ss"), a greedy answer stopped after a piece
    answers = " ".join(f"<answer>{w}</answer>" for w in [*COLORS, *SHAPES, *POSITIONS, *CHECKS])
    numbers = " ".join(str(v) for v in range(_view_side(model_cfg, synth) + 1))
    return lines * 8 + [answers] * 64 + [numbers] * 64


@dataclasses.dataclass
class Scene:
    """One pretraining image: the row, what the model first sees, and every object."""

    sample: Sample
    view: ImageView
    """What the model first sees of the image."""
    objects: list[SceneObject]
    grid: int
    """Cells per side of the grid the objects are centred in (`data.synth.grid`)."""


def grid_cell(obj: SceneObject, view: ImageView, grid: int) -> tuple[int, int]:
    """(column, row) of the grid cell `obj` is centred in (objects are drawn one per cell,
    `data.synth.grid`); on deepeyes-mini a cell is one image token of the full view."""
    x1, y1, x2, y2 = obj.box
    sx, sy = view.scale()
    cell = view.width / grid
    return int((x1 + x2) / 2 / sx // cell), int((y1 + y2) / 2 / sy // cell)


def zoom_box(obj: SceneObject, view: ImageView, grid: int) -> list[int]:
    """The supervised zoom box on `obj`, in pixels of `view`: a square of BOX_CELLS of a cell at
    the middle of its grid cell (`grid_cell`). The box's corner is a function of the cell alone:
    pointing is a choice among `grid` values per axis."""
    cell = view.width / grid
    side = round(cell * BOX_CELLS)
    corner = [round((index + 0.5) * cell - side / 2) for index in grid_cell(obj, view, grid)]
    return [corner[0], corner[1], corner[0] + side, corner[1] + side]


def describe(obj: SceneObject) -> str:
    """What the base says it sees in a crop of `obj`."""
    if obj.checks is not None:
        return f"I see a {obj.color} object with {obj.checks} checks."
    return f"I see a {obj.color} {obj.shape}."


def zoom_call(box: list[int]) -> str:
    """A turn that zooms on `box`: the thought, then the call in the DeepEyes format."""
    call = json.dumps({"name": "image_zoom_in_tool", "arguments": {"bbox_2d": box}})
    return f"{ZOOM_THOUGHT}\n<tool_call>\n{call}\n</tool_call>"


def answer_text(sample: Sample) -> str:
    """The right option's text (the reward rules read it as that option)."""
    return sample.choices["ABCD".index(sample.answer)]


class Pretraining:
    """Renders supervised sequences as the rollout would, as `Trajectory` records for the learner's
    `collate` (loss mask 1 on the supervised assistant tokens)."""

    def __init__(self, tokenizer, model_cfg: ModelConfig) -> None:
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        self.tools_cfg = ToolsConfig()
        self.image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def scene(self, index: int, synth: SynthConfig, seed: int, split: str = SPLIT) -> Scene:
        from tools import initial_view

        image, sample, objects = make_scene(index, synth.image_size, seed, split, list(synth.kinds),
                                            synth.clutter, synth.grid)
        view = initial_view(np.asarray(image), self.model_cfg, max_decoded_pixels=10**9)
        return Scene(sample=sample, view=view, objects=objects, grid=synth.grid)

    def crop(self, scene: Scene, turn: str):
        """The view the zoom tool gives back for the call in `turn` (it must succeed)."""
        from tools import ToolCall, execute_tool, parse_tool_call

        call = parse_tool_call(turn)
        if not isinstance(call, ToolCall):
            raise RuntimeError(f"the supervised turn holds no readable call: {turn!r} ({call})")
        outcome = execute_tool(call, [scene.view], self.tools_cfg, self.model_cfg)
        if outcome.error:
            raise RuntimeError(f"the supervised zoom failed: {outcome.error} ({turn!r})")
        return outcome.view

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _record(self, seq, name: str, prompt_len: int):
        from core.types import Trajectory

        ids, mask, logprobs = seq.arrays()
        return Trajectory(sample_id=name, group_id=name, input_ids=ids, loss_mask=mask,
                          behavior_logprobs=logprobs, images=list(seq.images), policy_version=0,
                          end_reason="answer", prompt_len=prompt_len)

    def caption(self, scene: Scene, obj: SceneObject):
        from actors.prompt import ASSISTANT_OPEN, IM_END, IM_START, IMAGE
        from actors.sequence import TokenSequence

        crop = self.crop(scene, zoom_call(zoom_box(obj, scene.view, scene.grid)))
        seq = TokenSequence(image_token_id=self.image_pad)
        seq.insert(self._encode(f"{IM_START}user\n{IMAGE}{CAPTION_QUESTION}{IM_END}\n{ASSISTANT_OPEN}"),
                   [crop.pixels])
        prompt_len = len(seq.ids)
        self._supervise(seq, f"{describe(obj)}{IM_END}", True)
        return self._record(seq, "caption", prompt_len)

    def pointing(self, scene: Scene, obj: SceneObject):
        from actors.prompt import ASSISTANT_OPEN, IM_END, IM_START, IMAGE
        from actors.sequence import TokenSequence

        seq = TokenSequence(image_token_id=self.image_pad)
        seq.insert(self._encode(f"{IM_START}user\n{IMAGE}{POINTING_REQUEST}{IM_END}\n{ASSISTANT_OPEN}"),
                   [scene.view.pixels])
        prompt_len = len(seq.ids)
        self._supervise(seq, zoom_call(zoom_box(obj, scene.view, scene.grid)), True)
        return self._record(seq, "pointing", prompt_len)

    def trajectory(self, scene: Scene, kind: str, obj: SceneObject | None):
        """One supervised trajectory of `kind` (see MIX), zooming on `obj` when it zooms."""
        from actors.prompt import IM_END, render_prompt, tool_response
        from actors.sequence import TokenSequence

        seq = TokenSequence(image_token_id=self.image_pad)
        tools = [] if kind == "no_tools" else ["image_zoom_in_tool"]
        seq.insert(self._encode(render_prompt(scene.sample, tools)), [scene.view.pixels])
        prompt_len = len(seq.ids)
        answer = f"<answer>{answer_text(scene.sample)}</answer>{IM_END}"
        if kind in ("direct", "no_tools"):
            self._supervise(seq, f"{DIRECT_THOUGHT}\n{answer}", True)
            return self._record(seq, kind, prompt_len)
        turn = zoom_call(zoom_box(obj, scene.view, scene.grid))
        crop = self.crop(scene, turn)
        self._supervise(seq, turn, kind == "search")
        seq.insert(self._encode(IM_END + "\n" + tool_response(with_image=True)), [crop.pixels])
        self._supervise(seq, f"<think>{describe(obj)}</think>\n{answer}", True)
        return self._record(seq, kind, prompt_len)

    def _supervise(self, seq, text: str, trained: bool) -> None:
        tokens = self._encode(text)
        if trained:
            seq.append_sampled(tokens, [0.0] * len(tokens))
        else:  # in the sequence, out of the loss
            seq.insert(tokens)


def _schedule(step: int, base: TinyBaseConfig) -> float:
    """Linear warm-up over 5% of the steps, the peak through the caption and pointing stages (new
    skills need it), cosine decay to 0 over the last stage."""
    warmup = max(1, base.steps // 20)
    if step < warmup:
        return base.lr * (step + 1) / warmup
    decay_start = max(warmup, min(base.steps - 1, base.caption_steps + base.pointing_steps))
    if step < decay_start:
        return base.lr
    return base.lr * 0.5 * (1 + math.cos(math.pi * (step - decay_start) / max(1, base.steps - decay_start)))


def stage_mix(step: int, base: TinyBaseConfig) -> tuple[int, int, int]:
    """(captions, pointings, trajectories) of optimizer step `step`: captions only for the first
    `caption_steps`, then pointings join for `pointing_steps`, then the trajectories."""
    if step < base.caption_steps:
        return base.captions_per_step, 0, 0
    if step < base.caption_steps + base.pointing_steps:
        return base.captions_per_step, base.pointings_per_step, 0
    return base.captions_per_step, base.pointings_per_step, base.trajectories_per_step


def token_classes(tokenizer) -> dict[str, set[int]]:
    """Token ids of the supervised text's classes the build log reports apart: 'perception' (the
    colour, shape and check words a caption names) and 'coordinates' (numbers: the zoom box); the rest
    is 'format'."""
    words = {*COLORS, *SHAPES, *(word for pair in CHECKS for word in pair.split() if word != "and")}
    return {"perception": {tokenizer.encode(" " + w, add_special_tokens=False)[0] for w in words},
            "coordinates": {i for i in range(len(tokenizer)) if tokenizer.decode([i]).strip().isdigit()}}


def loss_report(logprobs, batch, kinds: list[str], classes: dict[str, set[int]]) -> str:
    """Token-mean loss per sequence kind and per token class, e.g. 'caption 0.31 ... | perception
    1.02 coordinates 2.10 format 0.01'."""
    import torch

    ids, mask, nll = batch.input_ids[0], batch.loss_mask[0], -logprobs[0].detach()
    seq = batch.seq_index[0]
    is_kind = {k: torch.isin(seq, torch.tensor([i for i, n in enumerate(kinds) if n == k])) for k in kinds}
    is_class = {c: torch.isin(ids, torch.tensor(sorted(v))) for c, v in classes.items()}
    is_class["format"] = ~torch.stack(list(is_class.values())).any(0)

    def mean(select) -> str:
        weight = mask * select
        return f"{float((nll * weight).sum() / weight.sum()):.2f}" if weight.sum() > 0 else "-"

    return (" ".join(f"{k} {mean(v)}" for k, v in is_kind.items()) + " | "
            + " ".join(f"{c} {mean(v)}" for c, v in is_class.items()))


def build_base(model_cfg: ModelConfig, synth: SynthConfig, out_dir: Path,
               log: Callable[[str], None] = print, steps: int | None = None) -> Path:
    """Pretrain the base by the recipe of this module and save it at out_dir (atomically).

    `steps` stops early (tests of determinism); the schedule is still the full one's.
    """
    import tempfile

    import torch

    from learner.batching import TrainItem, collate
    from learner.model import load_policy, token_logprobs

    base = as_dataclass(model_cfg.base, TinyBaseConfig)
    synth = as_dataclass(synth, SynthConfig)
    start = time.perf_counter()
    tokenizer = _train_tokenizer(base.dims, base_corpus(model_cfg, synth))
    processor = _build_processor(tokenizer, model_cfg)
    with tempfile.TemporaryDirectory() as initial:  # loaded as the learner loads (packed attention)
        _build_model(base.dims, tokenizer).save_pretrained(initial)
        model = load_policy(initial)
    data = Pretraining(tokenizer, model_cfg)
    scenes = [data.scene(i, synth, base.seed) for i in range(base.images)]
    classes = token_classes(tokenizer)
    log(f"tiny base: {base.images} scenes in {time.perf_counter() - start:.0f}s")
    rng = random.Random(f"tiny-base:{base.seed}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=base.lr, weight_decay=0.01)
    kinds, shares = zip(*MIX, strict=True)
    losses = []
    for step in range(base.steps if steps is None else min(steps, base.steps)):
        captions, pointings, trajectories = stage_mix(step, base)
        items = []
        for _ in range(captions):
            scene = rng.choice(scenes)
            items.append(data.caption(scene, rng.choice(scene.objects)))
        for _ in range(pointings):
            scene = rng.choice(scenes)
            items.append(data.pointing(scene, rng.choice(scene.objects)))
        for _ in range(trajectories):
            scene, kind = rng.choice(scenes), rng.choices(kinds, shares)[0]
            obj = scene.objects[0] if kind == "read" else rng.choice(scene.objects)
            items.append(data.trajectory(scene, kind, obj))
        batch = collate([TrainItem(trajectory=t, advantage=0.0, name=t.sample_id) for t in items],
                        processor.image_processor, model)
        for group in optimizer.param_groups:
            group["lr"] = _schedule(step, base)
        logprobs, _ = token_logprobs(model, batch, temperature=1.0, with_entropy=False)
        loss = -(logprobs * batch.loss_mask).sum() / batch.loss_mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == base.steps - 1:
            log(f"tiny base: step {step}/{base.steps} loss {loss.item():.3f} "
                f"({loss_report(logprobs, batch, [t.sample_id for t in items], classes)}) "
                f"({time.perf_counter() - start:.0f}s)")
    model.config._attn_implementation = "sdpa"  # the folder loads like any other
    model.eval()
    save_folder(out_dir, model, processor, tokenizer)
    (out_dir / "build.json").write_text(json.dumps({"seconds": time.perf_counter() - start,
                                                    "losses": losses}) + "\n")
    return out_dir


@dataclasses.dataclass
class BaseSkills:
    """What `measure` finds the base can do on held-out scenes (greedy decoding, except
    `sampled_hits`)."""

    colour: float
    """Share of captions of a zoomed object that name its colour."""
    detail: float
    """Share of captions of a zoomed object that name what the full view hides: its pair of
    check colours (a checkered object), or its shape (a plain one)."""
    pointing_iou: float
    """Mean IoU of the pointed box with the supervised zoom box of the object it best matches."""
    pointing_hits: float
    """Share of pointed boxes with that IoU above 0.5 (on a grid: the very box, since the boxes
    of neighbouring cells do not overlap)."""
    pointing_valid: float
    """Share of pointing turns holding a call the zoom tool executes without an error."""
    sampled_hits: float
    """Share of pointing turns sampled at temperature 1 (SAMPLED_POINTINGS per scene, as RL
    samples them) whose box is an object's; compare with `chance`."""
    chance: float
    """Share of grid cells holding an object: what boxes on random cells would score."""
    n: int
    """Crops and views measured (each)."""


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def measure(model, processor, model_cfg: ModelConfig, synth: SynthConfig, n: int = 40,
            split: str = "test") -> BaseSkills:
    """The base's perception and pointing on `n` scenes of `split` (the RL held-out split by
    default, seed `synth.seed`): greedy captions of a crop around a random object (cut by the zoom
    tool, as in pretraining), and greedy and sampled pointing turns on the full view."""
    import re

    import torch

    from tools import ToolCall, execute_tool, parse_tool_call

    synth = as_dataclass(synth, SynthConfig)
    data = Pretraining(processor.tokenizer, model_cfg)
    rng = random.Random(f"tiny-base-measure:{split}")
    image_token = model.config.image_token_id

    def generate(record, max_new_tokens: int, sample: bool = False) -> str:
        ids = torch.tensor(record.input_ids[:record.prompt_len])[None]
        vision = processor.image_processor(images=list(record.images[:1]), return_tensors="pt")
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 pixel_values=vision["pixel_values"], image_grid_thw=vision["image_grid_thw"],
                                 mm_token_type_ids=(ids == image_token).int(), do_sample=sample,
                                 max_new_tokens=max_new_tokens)
        return processor.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=False)

    def pointed_box(record, view: ImageView, sample: bool = False) -> list[int] | None:
        """The pointing's box, or None when the zoom tool would refuse the call. The turn is cut at
        its first `</tool_call>`, where the rollout's engine stops."""
        call = parse_tool_call(generate(record, 72, sample).split("</tool_call>")[0] + "</tool_call>")
        if isinstance(call, ToolCall) and not execute_tool(call, [view], data.tools_cfg, model_cfg).error:
            return call.arguments["bbox_2d"]
        return None

    def best_iou(box: list[int], scene: Scene) -> float:
        return max(_iou(box, zoom_box(o, scene.view, scene.grid)) for o in scene.objects)

    torch.manual_seed(0)  # the sampled pointings
    colour = detail = valid = hits = sampled_hits = chance = 0
    ious = []
    for index in range(n):
        scene = data.scene(index, synth, synth.seed, split)
        obj = rng.choice(scene.objects)
        caption = generate(data.caption(scene, obj), 16).split("<|im_end|>")[0]
        words = re.findall(r"[a-z]+", caption)
        colour += obj.color in words
        detail += f"with {obj.checks} checks" in caption if obj.checks else obj.shape in words
        chance += len(scene.objects) / scene.grid**2
        pointing = data.pointing(scene, obj)
        for _ in range(SAMPLED_POINTINGS):
            box = pointed_box(pointing, scene.view, sample=True)
            sampled_hits += box is not None and best_iou(box, scene) > 0.5
        box = pointed_box(pointing, scene.view)
        ious.append(0.0 if box is None else best_iou(box, scene))
        valid += box is not None
        hits += ious[-1] > 0.5
    return BaseSkills(colour=colour / n, detail=detail / n, pointing_iou=sum(ious) / n,
                      pointing_hits=hits / n, pointing_valid=valid / n,
                      sampled_hits=sampled_hits / (n * SAMPLED_POINTINGS), chance=chance / n, n=n)


def main() -> None:
    """`python -m zoomrl.tiny_base [--config PRESET] [--n N] [key=value ...]`: build the base if it
    is not cached, then print what `measure` finds on the held-out split."""
    import argparse

    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from core.config import load_config

    parser = argparse.ArgumentParser(prog="python -m zoomrl.tiny_base", description=main.__doc__)
    parser.add_argument("--config", default="deepeyes-mini")
    parser.add_argument("--n", type=int, default=40, help="held-out crops and views to measure")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    start = time.perf_counter()
    folder = ensure_base(cfg.model, cfg.data.synth)
    print(f"base at {folder} ({time.perf_counter() - start:.0f}s)")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder).eval()
    skills = measure(model, AutoProcessor.from_pretrained(folder), cfg.model, cfg.data.synth, n=args.n)
    print(json.dumps(dataclasses.asdict(skills)))


if __name__ == "__main__":
    main()
