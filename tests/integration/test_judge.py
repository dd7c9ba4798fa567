"""A judge outage during `zoomrl train`, against the real HTTP judge stub (tests/helpers/judge_stub.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

from tests.helpers.cli import read_until
from tests.helpers.judge_stub import KEY_ENV, SECRET, Reply

FORCING = "actors.forcing:ForcedTurnsLogitsProcessor"
# Two scripted answers per group that rules cannot decide, so every group asks the judge; the stub
# says CORRECT to the first only, so advantages are not all zero.


ANSWERS = [["<think>look</think><answer>It looks green to me</answer><|im_end|>"],
           ["<think>look</think><answer>I see a red one</answer><|im_end|>"]]


def test_train_survives_a_judge_blip_and_stops_with_a_checkpoint_when_it_stays_down(judge_server, tmp_path):
    """The judge fails its first 3 requests (no retries in the client), then answers: the groups
    are requested again and the run goes on, counting them. After step 1 it goes down for good:
    the run ends with a one-line error naming the judge, with a checkpoint to resume from. The API
    key reaches the judge and no file the run writes."""
    stub = judge_server(lambda i: Reply(status=503) if i < 3 else Reply())
    runs = tmp_path / "runs"
    process = subprocess.Popen(
        [sys.executable, "-m", "zoomrl.cli", "train", f"run.runs_dir={runs}", "run.total_steps=3",
         "run.checkpoint_every=1", "rollout.n=2", "data.synth.n_train=8", "data.synth.n_test=2",
         "data.synth.image_size=512", "learner.prompts_per_step=2",
         f"rollout.engine.logits_processors=[{FORCING}]",
         f"rollout.sampling_extra_args.forced_turns_by_trajectory={json.dumps(ANSWERS)}",
         f"reward.judge.base_url={stub.url}", "reward.judge.max_retries=0", "reward.judge.timeout_s=5",
         "reward.judge.group_retries=3", "reward.judge.group_backoff_s=0.5",
         f"reward.judge.api_key_env={KEY_ENV}"],
        cwd=tmp_path, env={**os.environ, KEY_ENV: SECRET}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        url = read_until(process, "metrics: ", lines).split()[1]
        read_until(process, "step 1/3", lines)
        stub.plan = lambda i: Reply(status=503)  # down from now on
        scraped = urllib.request.urlopen(url, timeout=10).read().decode()
        assert process.wait(timeout=900) == 1
        lines += process.stdout.readlines()
    finally:
        process.kill()
    output = "".join(lines)
    # The blip: every failed group was requested again, and the endpoint counted it.
    reissued_at_step_1 = float(scraped.split("\nzoomrl_judge_reissued_groups_total ")[1].split()[0])
    assert reissued_at_step_1 >= 2, output[-3000:]
    assert "judge failed on group" in output and "requesting it again in" in output
    # The outage: one clear line naming the judge, and a checkpoint of the last step trained.
    [error] = [line for line in lines if line.startswith("zoomrl: error:")]
    assert f"the judge at {stub.url} stayed down" in error and "group_retries=3" in error
    [run_dir] = runs.iterdir()
    assert f"zoomrl train --resume {run_dir}" in error
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[0]["judge_reissued_groups"] >= 2
    checkpoint = sorted((run_dir / "checkpoints").iterdir())[-1]
    assert checkpoint.name == f"step-{steps[-1]['step']:08d}" and f"step {steps[-1]['step']}" in error
    extra = json.loads((checkpoint / "trainer.json").read_text())["extra"]
    assert extra["pending"]  # the groups the judge failed are requested again by --resume
    assert extra["judge_reissued_groups"] >= reissued_at_step_1
    # Before giving up, the driver requested groups again during the outage too (the group that
    # ended the run failed at most twice in the blip, and needs 4 failures).
    assert output.count("judge failed on group") >= reissued_at_step_1 + 1
    # The key went to the judge, and into nothing the run wrote (logs, config, checkpoints).
    assert stub.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(written) > 10 and not [path for path in written if SECRET.encode() in path.read_bytes()]
    assert SECRET not in output
