"""The prompt stream: samples in a shuffled order per epoch, with a position that resumes exactly."""

from __future__ import annotations

import random
from dataclasses import dataclass

from core.types import Sample


@dataclass
class StreamPosition:
    """Where the stream is; saved in checkpoints."""

    epoch: int = 0
    index: int = 0
    """Next position in this epoch's order."""
    issued: int = 0
    """Prompts handed out so far (all epochs); also the counter behind group ids."""


class PromptStream:
    """Hands out samples forever, one epoch after another, each epoch in its own seeded order.

    The order of epoch e depends only on (seed, e), so a stream restored from a position
    continues with exactly the prompts the uninterrupted run would have given.
    """

    def __init__(self, samples: list[Sample], shuffle: bool, seed: int,
                 position: StreamPosition | None = None):
        if not samples:
            raise ValueError("the prompt stream needs at least one sample")
        self.samples = samples
        self.shuffle = shuffle
        self.seed = seed
        self.position = position or StreamPosition()
        self._order = self._epoch_order(self.position.epoch)

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.samples)))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next(self) -> tuple[Sample, str]:
        """The next sample and a unique group id for it ('e<epoch>-<issued>')."""
        if self.position.index >= len(self._order):
            self.position = StreamPosition(self.position.epoch + 1, 0, self.position.issued)
            self._order = self._epoch_order(self.position.epoch)
        sample = self.samples[self._order[self.position.index]]
        group_id = f"e{self.position.epoch}-{self.position.issued}"
        self.position = StreamPosition(self.position.epoch, self.position.index + 1,
                                       self.position.issued + 1)
        return sample, group_id
