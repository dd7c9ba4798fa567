"""`zoomrl rollout` as a user runs it, on the embedded default (real vLLM CPU engine)."""

from __future__ import annotations

import json

from tests.helpers.cli import zoomrl


def test_rollout_writes_trajectories_from_the_embedded_default(tmp_path):
    out = tmp_path / "rollouts.jsonl"
    result = zoomrl("rollout", "--limit", "2", "--out", str(out), "rollout.n=2",
                    "rollout.max_tokens_per_turn=24", "data.synth.n_train=4", "data.synth.n_test=2",
                    "data.synth.image_size=512", f"model.cache_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4 and {r["group_id"] for r in records} == {"rollout-0", "rollout-1"}
    for record in records:
        assert record["end_reason"] and record["policy_version"] == 0
        assert 0 < record["response_tokens"] <= 24 * record["num_turns"]
        assert set(record["reward_parts"]) >= {"acc", "format", "tool"}
    summary = json.loads(result.stdout[result.stdout.index("{"):result.stdout.rindex("}") + 1])
    assert summary["trajectories"] == 4 and summary["rollout_tokens_per_s"] > 0
