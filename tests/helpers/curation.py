"""Rows for `zoomrl curate`, one per verdict the stages can reach."""

from __future__ import annotations

import dataclasses

from core.data import multiple_choice_prompt
from core.synth import make_sample


def mc_sample(index: int, choices: list[str], answer: str, boxes: bool = True):
    """A synthetic row with its options and answer replaced (the prompt lists the new options)."""
    base = make_sample(index, 512, 0, "train")
    return dataclasses.replace(
        base, choices=choices, answer=answer, gt_boxes=base.gt_boxes if boxes else [],
        messages=[{"role": "user", "content": multiple_choice_prompt(base.question, choices)}])


COLOURS = ["blue", "red", "green", "yellow"]


def curation_rows() -> list:
    """Rows whose fate under the scripted answers 'A' and 'A. red' (one trajectory each) is known."""
    return [
        mc_sample(0, ["red", "blue", "green", "yellow"], "A"),  # both right: always solved
        mc_sample(1, COLOURS, "A"),                  # 1/2; crop gives the same 1/2: crop does not help
        mc_sample(2, COLOURS, "A", boxes=False),     # 1/2, no box: kept
        mc_sample(3, COLOURS, "C"),                  # 0/2: never solved
        mc_sample(4, COLOURS, "E"),                  # label: answer not among the choices
        dataclasses.replace(mc_sample(5, COLOURS, "A"), gt_boxes=[[400.0, 400.0, 520.0, 500.0]]),  # box out
        dataclasses.replace(mc_sample(6, COLOURS, "A"), images=[b"not a png"]),  # label: image
        mc_sample(7, [], "B", boxes=False),          # label: a letter answer without choices
        mc_sample(8, COLOURS, "blue", boxes=False),  # 1/2 once standardized to 'A': kept
    ]
