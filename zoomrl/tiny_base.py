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
2. Data: `model.base.images` scenes of the synthetic generator (`zoomrl.synth.make_scene`, the
   run's `data.synth` image size, kinds and clutter) from split 'base', never 'train' or 'test'.
   Every sequence is rendered by the rollout's own code (`actors.prompt`, `actors.sequence`) and
   every crop cut by the zoom tool itself (`tools.execute_tool` on the parsed call), so the
   supervised text is token for token what the policy writes and reads at rollout.
3. Each step supervises (teacher forcing, token-mean cross-entropy on the assistant tokens only,
   AdamW, warm-up then cosine decay) a mix of:
   - captions (`captions_per_step`): a crop around a random object, "What is in the image?" ->
     "I see a red star." Short: the cheap perception stage;
   - pointings (`pointings_per_step`): the full view, "Zoom in on an object." -> the zoom turn
     of the trajectories below, its box on a random object. Short: the cheap grounding stage;
   - DeepEyes trajectories (`trajectories_per_step`), one of four kinds drawn per trajectory:
     * search (40%): `<think>` + a zoom call whose box (view pixels, 2.5x the object's side)
       goes to an object drawn uniformly from ALL objects of the image, not the one asked
       about; after the crop: `<think>I see a <colour> <shape>.</think>` + `<answer>`;
     * read (30%): the same, zoomed on the asked-about object, but the loss covers only the
       turn after the crop: it teaches reading the target when it is visible, never where it is;
     * direct (15%): tools offered, no call: `<think>` + `<answer>` from the full view;
     * no-tools (15%): the `tools.enabled=[]` prompt, `<think>` + `<answer>` from the full view.
     The answer is always the right option's text (which the reward rules read as that option):
     when the crop shows the target the answer is in it, otherwise it is a guess from the full
     view, so the base learns to use a crop when it holds the target and to guess otherwise.

What the base gets: the format (think, one valid zoom call, answer; or think, answer), boxes on
objects of the full view, the names of shapes and colours of a zoomed object, and answering from a
crop that shows the target. What it does not get: which object a question is about (its boxes
are uncorrelated with the question), so on held-out questions it zooms on a random object and is
near chance unless it happens on the target; RL has the visual search to learn. Neither does it
get more than one zoom per trajectory, nor reasoning in the think text beyond naming what it sees.

Status, measured (deepeyes-mini defaults, 160 steps, about 45 min on the shared 2-core machine):
the base writes the format (final loss about 0.41, almost all of it on tokens that are random
by design or that perception should have made certain), but perception and pointing are NOT yet
learned: on 20 held-out crops its captions name the colour and the shape right 15% of the time
each (chance 12.5% and 17%), and its greedy pointing box is one fixed box with no area.
`zoomrl eval --config deepeyes-mini` (64 test questions): greedy 18.8% [11.1, 30.0] with 3.0
failed calls per trajectory, the same 18.8% with `tools.enabled=[]`; sampled (temperature 1,
n=4) 11.3% [8.0, 15.8], 10.9% of trajectories with a real zoom, IoU 0.00, 88/256 format errors.
A likely cause: the token-mean loss is mostly pointing and format text; the colour and shape
tokens that carry perception are about 2% of it. Next: weight them (or a caption-only stage
first), log the loss per sequence kind, and check that a colour-only probe learns.
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

from tools.view import ImageView
from zoomrl.config import ModelConfig, SynthConfig, TinyBaseConfig, ToolsConfig
from zoomrl.synth import COLORS, SHAPES, SceneObject, make_scene
from zoomrl.tiny import (
    TINY_FORMAT,
    _build_model,
    _build_processor,
    _tokenizer_corpus,
    _train_tokenizer,
    as_dataclass,
    save_folder,
)
from zoomrl.types import Sample

BASE_FORMAT = 1  # bump when the recipe changes (invalidates cached bases)
SPLIT = "base"
"""The generator split the base's scenes come from (RL trains on 'train', evaluates on 'test')."""
ZOOM_MARGIN = 0.75
"""A supervised zoom box extends this many object sides beyond the object on each side."""
MIX = (("search", 0.4), ("read", 0.3), ("direct", 0.15), ("no_tools", 0.15))
"""Trajectory kinds and their shares (see the module docstring)."""
CAPTION_QUESTION = "What is in the image?"
POINTING_REQUEST = "Zoom in on an object."
ZOOM_THOUGHT = "<think>The object is small, so I zoom in on the region to see it clearly.</think>"
DIRECT_THOUGHT = "<think>I answer from the whole image.</think>"


def base_model_dir(model_cfg: ModelConfig, synth: SynthConfig) -> Path:
    """Cache folder of the base for these settings (content-addressed by everything it depends on)."""
    base = as_dataclass(model_cfg.base, TinyBaseConfig)
    key = json.dumps({"format": [TINY_FORMAT, BASE_FORMAT], "base": dataclasses.asdict(base),
                      "pixels": [model_cfg.min_pixels, model_cfg.max_pixels],
                      "scenes": [synth.image_size, list(synth.kinds), synth.clutter]}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(model_cfg.cache_dir).expanduser() / "models" / f"tiny-base-qwen2.5-vl-{digest}"


def ensure_base(model_cfg: ModelConfig, synth: SynthConfig, log: Callable[[str], None] = print) -> Path:
    """The base's folder, built (once per cache) when missing."""
    out_dir = base_model_dir(model_cfg, synth)
    if not (out_dir / "config.json").is_file():
        log(f"building the tiny base (once, cached at {out_dir}); recipe: zoomrl/tiny_base.py")
        build_base(model_cfg, synth, out_dir, log=log)
    return out_dir


def _view_side(model_cfg: ModelConfig, synth: SynthConfig) -> int:
    from zoomrl.images import smart_resize

    return max(smart_resize(synth.image_size, synth.image_size, model_cfg.min_pixels,
                            model_cfg.max_pixels))


def base_corpus(model_cfg: ModelConfig, synth: SynthConfig) -> list[str]:
    """Tokenizer corpus: the tiny corpus, the rendered conversation, the supervised phrases and
    every view coordinate (repeated, so each becomes one token)."""
    from actors.prompt import render_prompt, tool_response
    from zoomrl.synth import make_sample

    sample = make_sample(0, 512, 0, SPLIT)
    lines = _tokenizer_corpus()
    lines += [render_prompt(sample, ["image_zoom_in_tool"]), render_prompt(sample, []),
              tool_response(True), ZOOM_THOUGHT, DIRECT_THOUGHT, CAPTION_QUESTION, POINTING_REQUEST]
    lines += [f"I see a {c} {s}." for c in COLORS for s in SHAPES]
    numbers = " ".join(str(v) for v in range(_view_side(model_cfg, synth) + 1))
    return lines * 8 + [numbers] * 64


@dataclasses.dataclass
class Scene:
    """One pretraining image: the row, what the model first sees, and every object."""

    sample: Sample
    view: ImageView
    """What the model first sees of the image."""
    objects: list[SceneObject]


def zoom_box(obj: SceneObject, view: ImageView) -> list[int]:
    """The supervised zoom box around `obj`, in pixels of `view` (rounded outward)."""
    x1, y1, x2, y2 = obj.box
    pad = ZOOM_MARGIN * (x2 - x1)
    sx, sy = view.scale()
    return [max(0, math.floor((x1 - pad) / sx)), max(0, math.floor((y1 - pad) / sy)),
            min(view.width, math.ceil((x2 + pad) / sx)), min(view.height, math.ceil((y2 + pad) / sy))]


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

    def scene(self, index: int, synth: SynthConfig, seed: int) -> Scene:
        from tools import initial_view

        image, sample, objects = make_scene(index, synth.image_size, seed, SPLIT, list(synth.kinds),
                                            synth.clutter)
        view = initial_view(np.asarray(image), self.model_cfg, max_decoded_pixels=10**9)
        return Scene(sample=sample, view=view, objects=objects)

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
        from zoomrl.types import Trajectory

        ids, mask, logprobs = seq.arrays()
        return Trajectory(sample_id=name, group_id=name, input_ids=ids, loss_mask=mask,
                          behavior_logprobs=logprobs, images=list(seq.images), policy_version=0,
                          end_reason="answer", prompt_len=prompt_len)

    def caption(self, scene: Scene, obj: SceneObject):
        from actors.prompt import ASSISTANT_OPEN, IM_END, IM_START, IMAGE
        from actors.sequence import TokenSequence

        crop = self.crop(scene, zoom_call(zoom_box(obj, scene.view)))
        seq = TokenSequence(image_token_id=self.image_pad)
        seq.insert(self._encode(f"{IM_START}user\n{IMAGE}{CAPTION_QUESTION}{IM_END}\n{ASSISTANT_OPEN}"),
                   [crop.pixels])
        prompt_len = len(seq.ids)
        self._supervise(seq, f"I see a {obj.color} {obj.shape}.{IM_END}", True)
        return self._record(seq, "caption", prompt_len)

    def pointing(self, scene: Scene, obj: SceneObject):
        from actors.prompt import ASSISTANT_OPEN, IM_END, IM_START, IMAGE
        from actors.sequence import TokenSequence

        seq = TokenSequence(image_token_id=self.image_pad)
        seq.insert(self._encode(f"{IM_START}user\n{IMAGE}{POINTING_REQUEST}{IM_END}\n{ASSISTANT_OPEN}"),
                   [scene.view.pixels])
        prompt_len = len(seq.ids)
        self._supervise(seq, zoom_call(zoom_box(obj, scene.view)), True)
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
        turn = zoom_call(zoom_box(obj, scene.view))
        crop = self.crop(scene, turn)
        self._supervise(seq, turn, kind == "search")
        seq.insert(self._encode(IM_END + "\n" + tool_response(with_image=True)), [crop.pixels])
        self._supervise(seq, f"<think>I see a {obj.color} {obj.shape}.</think>\n{answer}", True)
        return self._record(seq, kind, prompt_len)

    def _supervise(self, seq, text: str, trained: bool) -> None:
        tokens = self._encode(text)
        if trained:
            seq.append_sampled(tokens, [0.0] * len(tokens))
        else:  # in the sequence, out of the loss
            seq.insert(tokens)


def _schedule(step: int, steps: int, lr: float) -> float:
    warmup = max(1, steps // 20)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * progress))


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
    log(f"tiny base: {base.images} scenes in {time.perf_counter() - start:.0f}s")
    rng = random.Random(f"tiny-base:{base.seed}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=base.lr, weight_decay=0.01)
    kinds, shares = zip(*MIX, strict=True)
    for step in range(base.steps if steps is None else min(steps, base.steps)):
        items = []
        for _ in range(base.captions_per_step):
            scene = rng.choice(scenes)
            items.append(data.caption(scene, rng.choice(scene.objects)))
        for _ in range(base.pointings_per_step):
            scene = rng.choice(scenes)
            items.append(data.pointing(scene, rng.choice(scene.objects)))
        for _ in range(base.trajectories_per_step):
            scene, kind = rng.choice(scenes), rng.choices(kinds, shares)[0]
            obj = scene.objects[0] if kind == "read" else rng.choice(scene.objects)
            items.append(data.trajectory(scene, kind, obj))
        batch = collate([TrainItem(trajectory=t, advantage=0.0, name=t.sample_id) for t in items],
                        processor.image_processor, model)
        for group in optimizer.param_groups:
            group["lr"] = _schedule(step, base.steps, base.lr)
        logprobs, _ = token_logprobs(model, batch, temperature=1.0, with_entropy=False)
        loss = -(logprobs * batch.loss_mask).sum() / batch.loss_mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 10 == 0 or step == base.steps - 1:
            log(f"tiny base: step {step}/{base.steps} loss {loss.item():.3f} "
                f"({time.perf_counter() - start:.0f}s)")
    model.config._attn_implementation = "sdpa"  # the folder loads like any other
    model.eval()
    return save_folder(out_dir, model, processor, tokenizer)
