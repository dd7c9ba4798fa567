"""`zoomrl view` and the images runs save for it: the image store, the records, the server, and the
page in a real headless Chromium (Debian's package; .ci/run installs it).

The trajectories are real: the iMCoT loop on a scripted engine (tests/unit/actors/test_imcot.py) with the tiny
tokenizer and the real zoom tool on a plain grey original, scored by the real reward. The grey
makes the image easy to find in a screenshot, so the test can check each drawn box lies where
its record says, in the page's own pixels.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import io
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer

from actors.imcot import run_trajectory
from core.data import read_samples
from core.images import encode_png
from core.types import Group
from rewards.score import score_group
from tests.helpers import ROOT
from tests.helpers.programs import require_chromium
from tests.helpers.scripted import ANSWER, ScriptedEngine, zoom
from tools import execute_tool, initial_view
from zoomrl.evaluate import eval_record
from zoomrl.records import IMAGES_DIR, LOSSLESS_MAX_PIXELS, ImageStore, trajectory_record
from zoomrl.viewer.server import make_server

ARTIFACTS = ROOT / "test-artifacts" / "viewer"
GREY = (200, 200, 200)
ORIGINAL_WH = (1000, 750)
BOX_COLOURS = [(255, 0, 255), (255, 140, 0), (0, 80, 255)]  # app.js BOX_COLOURS, calls 1..3
ZOOM_ZOOM = [zoom([20, 30, 200, 150]), zoom([600, 10, 700, 90]), zoom([50, 40, 250, 200]), ANSWER]
"""Zoom, a box outside the crop (an error the model is shown), a zoom into the crop, the answer."""


@pytest.fixture(scope="module")
def group(tiny_model_path, tiny_cfg, synth_dir) -> Group:
    """One scored group of three trajectories on a grey 1000x750 original: two zooms with a
    failed call between them; one failed call; no call at all."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    original = encode_png(np.full((ORIGINAL_WH[1], ORIGINAL_WH[0], 3), GREY, dtype=np.uint8))
    sample = dataclasses.replace(read_samples(str(synth_dir / "test.parquet"))[0], images=[original],
                                 gt_boxes=[[600.0, 400.0, 700.0, 500.0]])

    async def run_tool(call, view):
        return execute_tool(call, [view], tiny_cfg.tools, tiny_cfg.model)

    def roll(script: list[str], index: int):
        views = [initial_view(sample.images[0], tiny_cfg.model, tiny_cfg.data.max_decoded_pixels)]
        return asyncio.run(run_trajectory(sample, views, ScriptedEngine(tokenizer, script), run_tool,
                                          tiny_cfg, group_id="g7", index=index, policy_version=3))

    scripts = [ZOOM_ZOOM, [zoom([10, 10, 12, 12]), ANSWER], [ANSWER]]
    group = Group("g7", sample, [roll(script, i) for i, script in enumerate(scripts)])
    return score_group(group, tiny_cfg.reward)


@pytest.fixture(scope="module")
def run_dir(group, tmp_path_factory) -> Path:
    """A run directory as training leaves it: trajectories.jsonl (steps 1 and 2, the first
    trajectory logged twice) and validation's val/step-2.trajectories.jsonl with its own images;
    plus an eval report's trajectories, saved beside the run's into the same image store."""
    folder = tmp_path_factory.mktemp("run")
    images = ImageStore(folder)
    with open(folder / "trajectories.jsonl", "w") as sink:
        for step, index in ((1, 0), (1, 1), (2, 2), (2, 0)):
            sink.write(json.dumps({"step": step, **trajectory_record(group, index, images)}) + "\n")
    with open(folder / "report.trajectories.jsonl", "w") as sink:
        sink.write(json.dumps(eval_record(group, 0, "vstar", images)) + "\n")
    (folder / "val").mkdir()
    with open(folder / "val" / "step-2.trajectories.jsonl", "w") as sink:
        sink.write(json.dumps(eval_record(group, 0, "synth", ImageStore(folder / "val"))) + "\n")
    return folder


def test_image_store_writes_each_image_once_under_a_relative_path(tmp_path):
    store = ImageStore(tmp_path)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    path = store.save_pixels(pixels)
    assert re.fullmatch(rf"{IMAGES_DIR}/[0-9a-f]{{64}}\.png", path)
    assert np.array_equal(np.asarray(Image.open(tmp_path / path)), pixels)  # lossless
    assert store.save_pixels(pixels.copy()) == path
    assert store.save_pixels(pixels.reshape(60, 40, 3)) != path  # same bytes, another image
    assert store.save_pixels(pixels[:, :, ::-1].copy()) != path
    # another store on the folder (a resumed run, an eval beside a run) writes nothing again
    before = (tmp_path / path).stat().st_mtime_ns
    assert ImageStore(tmp_path).save_pixels(pixels) == path
    assert (tmp_path / path).stat().st_mtime_ns == before
    side = int(LOSSLESS_MAX_PIXELS ** 0.5) + 1
    assert store.save_pixels(np.zeros((side, side, 3), np.uint8)).endswith(".jpg")
    # encoded originals keep their bytes; a format browsers do not show becomes PNG
    jpeg, tiff = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).save(jpeg, format="JPEG")
    Image.fromarray(pixels).save(tiff, format="TIFF")
    saved = store.save_encoded(jpeg.getvalue())
    assert saved.endswith(".jpg") and (tmp_path / saved).read_bytes() == jpeg.getvalue()
    assert store.save_encoded(jpeg.getvalue()) == saved
    converted = store.save_encoded(tiff.getvalue())
    assert converted.endswith(".png") and np.array_equal(np.asarray(Image.open(tmp_path / converted)), pixels)
    assert sorted(p.name.startswith(".") for p in (tmp_path / IMAGES_DIR).iterdir()) == [False] * 6


def test_record_names_its_images_turns_and_calls(group, run_dir):
    records = [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    record, traj = records[0], group.trajectories[0]
    assert [i["kind"] for i in record["images"]] == ["original", "tool", "tool"]
    original = record["images"][0]
    assert (run_dir / original["path"]).read_bytes() == group.sample.images[0]
    assert original["size"] == list(ORIGINAL_WH) and original["model_size"] == [504, 364]
    for shown, pixels in zip(record["images"][1:], traj.images[1:], strict=True):
        assert np.array_equal(np.asarray(Image.open(run_dir / shown["path"])), pixels)
    calls = record["tool_calls"]
    assert [c["error"] != "" for c in calls] == [False, True, False]
    assert [c["image_index"] for c in calls] == [1, None, 2]
    assert [c["box_image"] for c in calls] == [0, None, 0]
    assert calls[0]["box_original"] == traj.tool_calls[0].box_original
    assert [t["call"] for t in record["turns"]] == [0, 1, 2, None]
    assert "lies outside" in record["turns"][1]["observation"]
    assert record["turns"][3]["text"] == "<think>now I see it</think><answer>B</answer>"
    assert record["policy_version"] == 3 and record["end_reason"] == "answer"
    assert record["reward_parts"]["tool_errors"] == 1.0
    # the same trajectory at step 2 and in the eval file names the same files
    assert records[3]["images"] == record["images"]
    assert len(list((run_dir / IMAGES_DIR).iterdir())) == 3


def _get(port: int, path: str) -> tuple[int, bytes]:
    """A GET with the path sent exactly as given (no client-side normalisation of '..')."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def test_server_lists_both_kinds_of_file_and_serves_only_the_run_folder(run_dir, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    (tmp_path / "secret.txt").write_text("not yours")
    (folder / "images" / "link.png").symlink_to(tmp_path / "secret.txt")
    with open(folder / "trajectories.jsonl", "a") as sink:
        sink.write("not json\n")
        sink.write('{"step": 3, "not": "finished"')  # a line being written: not read yet
    server = make_server(folder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        status, body = _get(port, "/api/trajectories")
        listing = json.loads(body)
        assert status == 200 and listing["files"] == [
            "report.trajectories.jsonl", "trajectories.jsonl", "val/step-2.trajectories.jsonl"]
        runs = [i for i in listing["items"] if i["file"] == 1]
        assert [(i["step"], i["line"], i["zooms"], i["tool_errors"]) for i in runs] == [
            (1, 1, 2, 1), (1, 2, 0, 1), (2, 3, 0, 0), (2, 4, 2, 1)]
        evaluated, validated = [i for i in listing["items"] if i["file"] != 1]
        assert evaluated["step"] is None and evaluated["eval_set"] == "vstar"
        assert validated["file"] == 2 and validated["eval_set"] == "synth"
        val_image = json.loads(_get(port, "/api/trajectory?file=2&line=1")[1])["images"][2]["path"]
        assert _get(port, f"/files/val/{val_image}") == (200, (folder / "val" / val_image).read_bytes())
        assert [p.split(" (")[0] for p in listing["problems"]] == ["trajectories.jsonl line 5: not JSON"]
        status, body = _get(port, "/api/trajectory?file=1&line=4")
        assert status == 200 and json.loads(body)["step"] == 2
        assert _get(port, "/api/trajectory?file=1&line=5")[0] == 404
        image = json.loads(body)["images"][1]["path"]
        assert _get(port, f"/files/{image}") == (200, (folder / image).read_bytes())
        assert _get(port, "/")[0] == 200 and _get(port, "/static/app.js")[0] == 200
        for path in ("/files/../secret.txt", "/files/%2e%2e/secret.txt", "/files/images/../../secret.txt",
                     "/files/images/link.png", "/files//etc/passwd", "/files/%2fetc/passwd",
                     "/static/../server.py", "/static/%2e%2e/server.py", "/files/", "/files/images"):
            status, body = _get(port, path)
            assert status == 404 and b"not yours" not in body, path
    finally:
        server.shutdown()
        server.server_close()


def _view(run_dir: Path) -> tuple[subprocess.Popen, str]:
    """`zoomrl view RUN_DIR` as a user starts it, and the URL it prints."""
    process = subprocess.Popen([sys.executable, "-m", "zoomrl.cli", "view", str(run_dir)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = process.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+/", line)
    if match is None:
        process.kill()
        raise AssertionError(f"zoomrl view printed no URL: {line!r} {process.stdout.read()}")
    return process, match.group(0)


def _near(pixels: np.ndarray, x: float, y: float, colour: tuple[int, int, int], reach: int = 2) -> bool:
    """Whether a pixel within `reach` of (x, y) has `colour` (anti-aliasing blurs the stroke's edges)."""
    x, y = round(x), round(y)
    patch = pixels[y - reach:y + reach + 1, x - reach:x + reach + 1].astype(int)
    return bool((np.abs(patch - colour).max(axis=-1) <= 40).any())


def test_page_draws_every_zoom_box_where_the_record_says(run_dir):
    chromium = require_chromium()
    # a validation record: the page must find its images under val/
    record = json.loads((run_dir / "val" / "step-2.trajectories.jsonl").read_text())
    process, url = _view(run_dir)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "trajectory.png"
    screenshot.unlink(missing_ok=True)
    try:
        out = subprocess.run(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--force-device-scale-factor=1", "--window-size=1100,1600", "--virtual-time-budget=10000",
             f"--screenshot={screenshot}", "--dump-dom", f"{url}#f-zooms-min=1&f-end=answer&file=2&line=1"],
            capture_output=True, text=True, timeout=60)
    finally:
        process.terminate()
        process.wait(timeout=10)
    dom = out.stdout
    assert 'data-ready="1"' in dom, out.stderr[-2000:]
    # the list: every file, run records under their steps, eval records under their sets
    assert all(heading in dom for heading in ("trajectories.jsonl · step 1", "trajectories.jsonl · step 2",
                                              "report.trajectories.jsonl · vstar",
                                              "val/step-2.trajectories.jsonl · synth"))
    # the filters from the URL: only the 4 records of the trajectory that zoomed are listed
    assert "4 of 6 trajectories" in dom and "g7 #1" not in dom and "g7 #2" not in dom
    # the DOM: one box per successful zoom, numbered in call order, in original pixels
    boxes = re.findall(r'<rect class="box" data-call="(\d+)" x="([\d.]+)" y="([\d.]+)" '
                       r'width="([\d.]+)" height="([\d.]+)"', dom)
    expected = [(j + 1, c["box_original"]) for j, c in enumerate(record["tool_calls"]) if c["box_original"]]
    assert [int(b[0]) for b in boxes] == [1, 3]
    for (call, box), found in zip(expected, boxes, strict=True):
        x, y, w, h = map(float, found[1:])
        assert [x, y, x + w, y + h] == pytest.approx(box), call
    assert re.findall(r'<span class="box-label" data-call="(\d+)"[^>]*>(\d+)</span>', dom) == [
        ("1", "1"), ("3", "3")]
    assert 'viewBox="0 0 1000 750"' in dom and "policy version 3" in dom
    assert "Error: the box [600, 10, 700, 90] lies outside" in dom and "tool_errors" in dom
    # the pixels: where the grey original is on screen, and each box's stroke at its edges
    pixels = np.asarray(Image.open(screenshot).convert("RGB"))
    grey = (pixels == GREY).all(axis=-1)
    rows = np.nonzero(grey.sum(axis=1) > 100)[0]  # rows through an image, not a stray text pixel
    # the first block of rows: the crops below it are grey too
    rows = rows[:np.argmax(np.diff(rows, append=rows[-1] + 2) > 1) + 1]
    xs = np.nonzero(grey[rows].sum(axis=0) > len(rows) / 2)[0]
    left, top, right, bottom = xs.min(), rows.min(), xs.max() + 1, rows.max() + 1
    sx, sy = (right - left) / ORIGINAL_WH[0], (bottom - top) / ORIGINAL_WH[1]
    assert sx == pytest.approx(sy, rel=0.01) and 300 < right - left < ORIGINAL_WH[0]  # scaled down to fit
    for call, (x1, y1, x2, y2) in expected:
        colour = BOX_COLOURS[call - 1]
        sx1, sy1, sx2, sy2 = left + x1 * sx, top + y1 * sy, left + x2 * sx, top + y2 * sy
        mid_x, mid_y = (sx1 + sx2) / 2, (sy1 + sy2) / 2
        edges = [(round(x), round(y)) for x, y in ((sx1, mid_y), (sx2, mid_y), (mid_x, sy1), (mid_x, sy2))]
        assert [edge for edge in edges if not _near(pixels, *edge, colour)] == [], f"call {call}"
        assert not _near(pixels, mid_x, mid_y, colour, reach=1), f"call {call}"  # an outline, not a fill
        assert not _near(pixels, sx1 - 8, mid_y, colour, reach=1), f"call {call}"  # and not wider
