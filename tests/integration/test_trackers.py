"""An offline W&B run (W&B starts its own service process) read back: the .wandb file decoded with
W&B's own record protobuf, and the table files it staged."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from core.config import load_config
from core.images import encode_png
from core.metrics import DriverMetrics
from core.types import Group, Sample, ToolCallRecord, Trajectory
from tests.helpers.records import DETAILS, STEPS, reward_parts
from zoomrl.records import ImageStore, trajectory_record
from zoomrl.trackers import WANDB_RUN_ID, open_trackers


def zoomed_record(run_dir: Path) -> dict:
    """A real trajectory record (`zoomrl.records`, images saved under run_dir): one zoom and a
    ground-truth box on a 200x100 original."""
    original = np.zeros((100, 200, 3), np.uint8)
    sample = Sample(id="synth:0", data_source="synth_vstar", messages=[], images=[encode_png(original)],
                    question="What colour is the star?", answer="B", gt_boxes=[[120.0, 10.0, 180.0, 60.0]])
    traj = Trajectory(sample_id=sample.id, group_id="g0", input_ids=np.zeros(4, np.int64),
                      loss_mask=np.ones(4, np.int8), behavior_logprobs=np.zeros(4, np.float32),
                      images=[original, np.full((56, 56, 3), 255, np.uint8)], policy_version=0,
                      end_reason="answer", response_text="<answer>B</answer>", reward=1.0,
                      reward_parts=reward_parts(acc=1.0),
                      tool_calls=[ToolCallRecord("image_zoom_in_tool", {"bbox_2d": [100, 0, 190, 70]},
                                                 box_original=[100.0, 0.0, 190.0, 70.0], image_index=1)])
    group = Group(group_id="g0", sample=sample, trajectories=[traj])
    return {"step": 2, **trajectory_record(group, 0, ImageStore(run_dir))}


def wandb_records(run_folder: Path) -> list:
    """The records of an offline run's .wandb file: a LevelDB-style log (32 KiB blocks of chunks,
    each `crc32 u32, length u16, kind u8` then data; kind 1 = whole record, 2/3/4 = first,
    middle, last piece) after a 7-byte ':W&B' header, each record W&B's `Record` protobuf."""
    from wandb.proto.wandb_internal_pb2 import Record

    [path] = run_folder.glob("*.wandb")
    data, block, header = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    records, pos, pieces = [], 7, b""
    while pos + header <= len(data):
        if block - pos % block < header:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        pieces += data[pos + header:pos + header + length]
        pos += header + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    """W&B offline, its logs and settings in tmp_path instead of the home folder."""
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                        "WANDB_CACHE_DIR": tmp_path / "wandb-cache",
                        "WANDB_CONFIG_DIR": tmp_path / "wandb-config"}.items():
        monkeypatch.setenv(name, str(value))
    # Unset during the test (the tracker sets it to the run directory) and as before after it:
    # setenv records the value to restore, which delenv of an unset variable does not.
    monkeypatch.setenv("WANDB_DATA_DIR", "")
    monkeypatch.delenv("WANDB_DATA_DIR")


def test_an_offline_wandb_run_holds_config_figures_and_a_trajectory_table_with_boxes(tmp_path, wandb_offline):
    run_dir = tmp_path / "run-1"
    run_dir.mkdir()
    cfg = load_config(None, ["metrics.trackers=[wandb]", "metrics.wandb.project=zoomrl-test",
                             "metrics.wandb.tags=[sweep]", "learner.lr=3e-6"])
    record = zoomed_record(run_dir)
    for steps, resume_step in (([1, 2], None), ([3], 2)):  # the second: `zoomrl train --resume`
        trackers = open_trackers(cfg, run_dir, DriverMetrics("127.0.0.1", 0), resume_step)
        for step in steps:
            trackers.log(step, STEPS[min(step, 2) - 1], DETAILS)
        if resume_step is None:
            trackers.log_trajectories(2, [record])
        trackers.close()

    run_id = (run_dir / WANDB_RUN_ID).read_text().strip()
    first, resumed = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert first.name.endswith(run_id) and resumed.name.endswith(run_id)  # one W&B run, continued
    records = wandb_records(first)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "zoomrl-test" and run.display_name == "run-1" and list(run.tags) == ["sweep"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["learner"]["lr"] == 3e-6 and config["metrics"]["trackers"] == ["wandb"]
    history = [{"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [{name: h[name] for name in STEPS[0]} | {"_step": h["_step"]} for h in history] == [
        STEPS[0] | {"_step": 1}, STEPS[1] | {"_step": 2}]
    assert history[1]["trajectories/_type"] == "table-file"

    # The table went into a run artifact whose files W&B staged under the run directory.
    [artifact] = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    files = {entry.path: Path(entry.local_path) for entry in artifact.manifest.contents}
    assert all(run_dir in path.parents for path in files.values())
    table = json.loads(files["trajectories.table.json"].read_text())
    [row] = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert (row["step"], row["sample_id"], row["answer"], row["reward"]) == (2, "synth:0", "B", 1.0)
    image = row["image"]
    assert (image["width"], image["height"]) == (200, 100)  # the original, not what the model saw
    assert image["path"] in files  # the saved original went along
    assert {layer: [(b["position"], b["domain"], b["box_caption"]) for b in boxes]
            for layer, boxes in image["boxes"].items()} == {
        "zoom": [({"minX": 100.0, "minY": 0.0, "maxX": 190.0, "maxY": 70.0}, "pixel", "zoom 1")],
        "ground_truth": [({"minX": 120.0, "minY": 10.0, "maxX": 180.0, "maxY": 60.0}, "pixel",
                          "ground truth")]}
