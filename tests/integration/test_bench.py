"""`python -m bench pointing` end to end on a tiny scene set (it trains the tiny base's decoder)."""

from __future__ import annotations

import json

import pytest

from bench.__main__ import main


def test_pointing_case_reports_the_decoders_log_loss_against_its_floors(tmp_path):
    """Two steps on hand-made tokens (the figures of a full run are in bench/README.md)."""
    import math

    out = tmp_path / "pointing.json"
    args = ["pointing", "--steps", "2", "--scenes", "4", "--vision", "object-codes", "--spread", "1",
            "--shrink-steps", "2", "--out", str(out)]
    assert main(args) == 0
    figures = json.loads(out.read_text())["figures"]
    assert (figures["spread"], figures["shrink_steps"]) == (1, 2)
    assert figures["random_cell_nll"] == pytest.approx(math.log(7))
    # a box on a random object is more certain than one on a random cell
    assert 0 < figures["random_object_x1_entropy"] < figures["random_cell_nll"]
    assert 0 <= figures["random_object_y1_entropy"] < figures["random_cell_nll"]
    assert figures["x1_nll"] > 0 and figures["y1_nll"] > 0 and len(figures["loss_first"]) == 2
