"""The ground floor: what every part of zoomrl shares, importing none of them.

The config and its presets, the records a run passes around (`types`), images and tensors, the
data readers and the synthetic set, the tiny model, the prompt stream, the metric registry, the
spans every process records of its own work (`spans`, read by `python -m bench anatomy`), and the
weight-sync wire (the published weights' records, the process group and vLLM's transfer
backends, shared by the learner and the engines). Above it: tools/ and rewards/, then actors/ and
learner/ (the packages of one level import none of each other), then the run (zoomrl/: driver,
CLI, eval, curate). `make lint` checks the direction (lint-imports; the
contract is in pyproject.toml).
"""
