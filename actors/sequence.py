"""One trajectory's growing token sequence, held in its two views at once.

The engine's view gives vLLM ONE `<|image_pad|>` per image (vLLM expands it; giving it expanded
pads silently corrupts the prompt). The learner's view has every pad expanded to the image's
token count, exactly as the processor expands it, plus a loss mask and behaviour logprobs aligned
to it. This class is the one place that converts between the two, and `check_engine_view` holds
it to vLLM's own expansion at every turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.images import num_image_tokens


class ViewMismatch(RuntimeError):
    """The engine expanded the prompt differently from the learner's view (a bug, never data)."""


@dataclass
class TokenSequence:
    image_token_id: int
    engine_ids: list[int] = field(default_factory=list)
    """Engine view: one image pad per image."""
    ids: list[int] = field(default_factory=list)
    """Learner view: image pads expanded."""
    loss_mask: list[int] = field(default_factory=list)
    """1 on tokens the policy sampled, aligned with ids."""
    logprobs: list[float] = field(default_factory=list)
    """Behaviour log-prob of sampled tokens, 0 elsewhere, aligned with ids."""
    images: list[np.ndarray] = field(default_factory=list)
    """(H, W, 3) uint8 smart-resized images, in pad order."""

    def insert(self, token_ids: list[int], new_images: list[np.ndarray] = ()) -> None:
        """Tokens the loop writes (prompt, tool responses, chat scaffolding): loss mask 0.

        Each image pad in token_ids stands for the next of new_images.
        """
        pads = token_ids.count(self.image_token_id)
        if pads != len(new_images):
            raise ValueError(f"{pads} image pads in the inserted tokens for {len(new_images)} images")
        pending = iter(new_images)
        for token in token_ids:
            repeat = 1
            if token == self.image_token_id:
                image = next(pending)
                self.images.append(image)
                repeat = num_image_tokens(*image.shape[:2])
            self.ids.extend([token] * repeat)
        self.engine_ids.extend(token_ids)
        added = len(self.ids) - len(self.loss_mask)
        self.loss_mask.extend([0] * added)
        self.logprobs.extend([0.0] * added)

    def append_sampled(self, token_ids: list[int], logprobs: list[float]) -> None:
        """Tokens the policy sampled, with their behaviour log-probs: loss mask 1."""
        if len(token_ids) != len(logprobs):
            raise ValueError(f"{len(token_ids)} tokens but {len(logprobs)} logprobs")
        if self.image_token_id in token_ids:
            raise ValueError("a sampled turn holds an image pad token (the engine must ban it)")
        self.engine_ids.extend(token_ids)
        self.ids.extend(token_ids)
        self.loss_mask.extend([1] * len(token_ids))
        self.logprobs.extend(logprobs)

    def check_engine_view(self, expanded_prompt_ids: list[int]) -> None:
        """vLLM's expansion of engine_ids (RequestOutput.prompt_token_ids) must equal ids."""
        if list(expanded_prompt_ids) != self.ids:
            first = next((i for i, (a, b) in enumerate(zip(expanded_prompt_ids, self.ids, strict=False))
                          if a != b), min(len(expanded_prompt_ids), len(self.ids)))
            around = slice(max(first - 4, 0), first + 4)
            raise ViewMismatch(f"engine expanded the prompt to {len(expanded_prompt_ids)} tokens, the "
                               f"learner's view has {len(self.ids)}; first difference at token {first} "
                               f"(engine {list(expanded_prompt_ids[around])}, learner {self.ids[around]}; "
                               f"images {[im.shape for im in self.images]})")

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids int64, loss_mask int8, behavior_logprobs float32), each (T,)."""
        return (np.asarray(self.ids, dtype=np.int64), np.asarray(self.loss_mask, dtype=np.int8),
                np.asarray(self.logprobs, dtype=np.float32))
