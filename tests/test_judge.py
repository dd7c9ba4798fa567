"""The LLM judge client against a real OpenAI-compatible HTTP stub on 127.0.0.1.

The stub answers deterministically (CORRECT when the candidate answer mentions green), and each
test scripts its failures: slow replies, 5xx, 401, garbage. It records every request, and how
many it was serving at once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from test_train_e2e import read_until

from core.config import JudgeConfig, RewardConfig
from core.types import Group, Sample, Trajectory
from rewards import JudgeClient, JudgeError, score_group
from rewards.judge import judge_client, judge_messages

KEY_ENV = "ZOOMRL_TEST_JUDGE_KEY"
SECRET = "sk-test-0123456789-do-not-leak"


@dataclass
class Reply:
    status: int = 200
    content: str | None = None
    """The assistant message; None = the deterministic verdict."""
    delay_s: float = 0.0
    raw: bytes | None = None
    """A body sent as is (for malformed replies)."""


@dataclass
class Stub:
    """What the server was asked, and how it answers request number i (0-based)."""

    plan: Callable[[int], Reply] = lambda i: Reply()
    requests: list[dict] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def candidates(self) -> list[str]:
        """The candidate answer of every request, in arrival order."""
        return [_candidate(r["body"]) for r in self.requests]


def _candidate(body: dict) -> str:
    return body["messages"][-1]["content"].split("Candidate answer: ", 1)[1]


def _handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with stub.lock:
                index = len(stub.requests)
                stub.requests.append({"path": self.path, "headers": dict(self.headers),
                                      "body": body})
                stub.in_flight += 1
                stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
            reply = stub.plan(index)
            time.sleep(reply.delay_s)
            with stub.lock:  # before replying, so a client's next request never overlaps it
                stub.in_flight -= 1
            content = reply.content
            if content is None:
                content = "CORRECT" if "green" in _candidate(body).lower() else "INCORRECT"
            data = reply.raw if reply.raw is not None else json.dumps(
                {"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # the client hung up on a slow reply: expected in the timeout tests


@pytest.fixture
def serve():
    """serve(plan) -> a running Stub; servers stop at teardown."""
    servers = []

    def start(plan: Callable[[int], Reply] = lambda i: Reply()) -> Stub:
        stub = Stub(plan=plan)
        server = _QuietServer(("127.0.0.1", 0), _handler(stub))
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        stub.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        return stub

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def config(url: str, **overrides) -> JudgeConfig:
    values = dict(base_url=url, model="judge-7b", api_key_env=KEY_ENV, timeout_s=0.5,
                  max_retries=2, backoff_s=0.01, max_concurrency=3, cache_size=100)
    return JudgeConfig(**{**values, **overrides})


# --- verdicts and the request ----------------------------------------------------------------

def test_verdicts_and_what_is_sent(serve):
    stub = serve()
    client = JudgeClient(config(stub.url + "/"))
    assert client.judge("What colour is the umbrella?", "green", "A dark green one.") is True
    assert client.judge("What colour is the umbrella?", "green", "red") is False
    request = stub.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
    body = request["body"]
    assert body["model"] == "judge-7b" and body["temperature"] == 0.0
    assert body["messages"] == judge_messages("What colour is the umbrella?", "green",
                                              "A dark green one.")
    assert body["messages"][-1]["content"] == ("Question: What colour is the umbrella?\n"
                                               "Reference answer: green\n"
                                               "Candidate answer: A dark green one.")


def test_no_key_in_the_environment_sends_no_authorization(serve, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    stub = serve()
    assert JudgeClient(config(stub.url)).judge("q", "green", "green")
    assert "Authorization" not in stub.requests[0]["headers"]


def test_the_verdict_word_is_found_in_a_longer_reply(serve):
    replies = ["Verdict: INCORRECT.", "correct", "The candidate is CORRECT"]
    stub = serve(lambda i: Reply(content=replies[i]))
    client = JudgeClient(config(stub.url))
    assert [client.judge("q", "a", p) for p in "xyz"] == [False, True, True]


def test_one_client_per_judge_config_in_a_process(serve):
    stub = serve()
    assert judge_client(config(stub.url)) is judge_client(config(stub.url))
    assert judge_client(config(stub.url)) is not judge_client(config(stub.url, timeout_s=9.0))


def test_an_empty_base_url_is_no_judge():
    with pytest.raises(ValueError, match="base_url"):
        JudgeClient(JudgeConfig())


# --- failures: retried, then loud ------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_are_retried_until_an_answer(serve, status):
    stub = serve(lambda i: Reply(status=status) if i < 2 else Reply())
    assert JudgeClient(config(stub.url)).judge("q", "green", "green") is True
    assert len(stub.requests) == 3  # two failures, then the answer (max_retries=2)


def test_a_server_that_always_fails_raises_after_every_retry(serve, caplog):
    stub = serve(lambda i: Reply(status=500))
    with pytest.raises(JudgeError) as err:
        JudgeClient(config(stub.url)).judge("q", "green", "green")
    assert len(stub.requests) == 3
    assert "3 attempts" in str(err.value) and "HTTP 500" in str(err.value)
    assert SECRET not in str(err.value) and SECRET not in caplog.text
    assert "retry 2/2" in caplog.text  # each retry is logged, without the key


def test_unauthorized_fails_at_once_without_showing_the_key(serve, caplog):
    stub = serve(lambda i: Reply(status=401))
    with pytest.raises(JudgeError, match="HTTP 401") as err:
        JudgeClient(config(stub.url)).judge("q", "green", "green")
    assert len(stub.requests) == 1  # retrying a refused key cannot help
    assert KEY_ENV in str(err.value)  # names the variable to check...
    assert SECRET not in str(err.value) and SECRET not in caplog.text  # ...never its value


def test_a_slow_reply_times_out_and_is_retried(serve):
    stub = serve(lambda i: Reply(delay_s=2.0) if i == 0 else Reply())
    start = time.monotonic()
    assert JudgeClient(config(stub.url, timeout_s=0.3)).judge("q", "green", "green") is True
    assert len(stub.requests) == 2 and time.monotonic() - start < 1.5


def test_a_judge_that_always_times_out_raises(serve):
    stub = serve(lambda i: Reply(delay_s=2.0))
    start = time.monotonic()
    with pytest.raises(JudgeError, match="3 attempts"):
        JudgeClient(config(stub.url, timeout_s=0.2)).judge("q", "green", "green")
    assert len(stub.requests) == 3
    assert time.monotonic() - start < 2.0  # 3 x 0.2 s timeouts + short backoffs, not 3 x 2 s


@pytest.mark.parametrize("reply, fragment", [
    (Reply(content="Maybe?"), "neither CORRECT nor INCORRECT"),
    (Reply(raw=b"<html>proxy error</html>"), "malformed reply"),
    (Reply(raw=b'{"choices": []}'), "malformed reply"),
])
def test_unreadable_replies_are_retried_then_raise(serve, reply, fragment):
    stub = serve(lambda i: reply)
    with pytest.raises(JudgeError, match=fragment):
        JudgeClient(config(stub.url)).judge("q", "green", "green")
    assert len(stub.requests) == 3


def test_an_unreachable_judge_raises_after_retries():
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(JudgeError, match="3 attempts"):
        JudgeClient(config(f"http://127.0.0.1:{port}/v1")).judge("q", "green", "green")


def test_backoff_doubles_between_retries(serve):
    stub = serve(lambda i: Reply(status=500))
    start = time.monotonic()
    with pytest.raises(JudgeError):
        JudgeClient(config(stub.url, max_retries=3, backoff_s=0.1)).judge("q", "a", "b")
    # Waits of 0.1, 0.2, 0.4 s, each times a jitter in [0.5, 1]: at least 0.35 s, at most 0.7 s.
    assert 0.35 <= time.monotonic() - start < 0.7 + 1.0


# --- cache and concurrency -------------------------------------------------------------------

def test_each_distinct_item_is_asked_once(serve):
    stub = serve()
    client = JudgeClient(config(stub.url))
    items = [("q", "green", p) for p in ["green", "red", "green", "teal", "red", "green"]]
    assert client.judge_all(items) == [True, False, True, False, False, True]
    assert sorted(stub.candidates()) == ["green", "red", "teal"]
    assert client.judge("q", "green", "teal") is False and len(stub.requests) == 3  # cached
    client.judge("another question", "green", "teal")  # the key is (question, answer, prediction)
    client.judge("q", "teal", "teal")
    assert len(stub.requests) == 5
    assert client.judge_all([]) == []


def test_the_cache_keeps_the_most_recently_used(serve):
    stub = serve()
    client = JudgeClient(config(stub.url, cache_size=2))
    for prediction in ["a", "b", "a", "c", "a"]:  # 'a' is used again, so 'b' is dropped for 'c'
        client.judge("q", "green", prediction)
    assert stub.candidates() == ["a", "b", "c"]
    client.judge("q", "green", "b")
    assert stub.candidates() == ["a", "b", "c", "b"]


def test_requests_in_flight_never_exceed_max_concurrency(serve):
    stub = serve(lambda i: Reply(delay_s=0.3))
    client = JudgeClient(config(stub.url, max_concurrency=3))
    batches = [[("q", "green", f"{name}{i}") for i in range(6)] for name in ("x", "y")]
    threads = [threading.Thread(target=client.judge_all, args=(batch,)) for batch in batches]
    for thread in threads:  # two callers at once share the one bound
        thread.start()
    for thread in threads:
        thread.join()
    assert len(stub.requests) == 12
    assert stub.max_in_flight == 3


# --- the judge inside group scoring ----------------------------------------------------------

def fresh_reward_config(url: str, **overrides) -> RewardConfig:
    """A judge config no earlier test used: score_group keeps one cached client per config and
    process, and a port the OS hands out again must not find an old test's verdicts."""
    return RewardConfig(judge=config(url, model=f"judge-{uuid.uuid4().hex}", **overrides))


def _group(predictions: list[str]) -> Group:
    sample = Sample(id="vstar:7", data_source="vstar", messages=[], images=[],
                    question="What colour is the umbrella?", answer="B",
                    choices=["red", "green", "blue", "yellow"])
    trajectories = [
        Trajectory(sample_id=sample.id, group_id="g7", input_ids=np.zeros(3, dtype=np.int64),
                   loss_mask=np.ones(3, dtype=np.int8),
                   behavior_logprobs=np.zeros(3, dtype=np.float32), images=[], policy_version=0,
                   end_reason="answer", response_text=f"<think>x</think><answer>{p}</answer>")
        for p in predictions]
    return Group("g7", sample, trajectories)


def test_score_group_asks_the_judge_only_what_rules_cannot_decide(serve):
    stub = serve()
    predictions = ["B", "(C)", "green", "It looks green to me", "I see red", "B. blue",
                   "It looks green to me"]
    group = score_group(_group(predictions), fresh_reward_config(stub.url))
    # Rules settle 'B', '(C)' and 'green'; the rest go to the judge, each distinct one once.
    assert sorted(stub.candidates()) == ["B. blue", "I see red", "It looks green to me"]
    question = stub.requests[0]["body"]["messages"][-1]["content"]
    assert question.startswith("Question: What colour is the umbrella?\nOptions:\nA. red\n"
                               "B. green\nC. blue\nD. yellow\nReference answer: B. green\n")
    parts = [t.reward_parts for t in group.trajectories]
    assert [p.acc for p in parts] == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert [p.judged for p in parts] == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert all(p.undecided == 0.0 for p in parts)
    np.testing.assert_allclose(group.rewards, [0.8, 0.0, 0.8, 0.8, 0.0, 0.0, 0.8])


def test_score_group_never_asks_when_rules_decide_everything(serve):
    stub = serve()
    group = score_group(_group(["B", "A", "(b) green"]), fresh_reward_config(stub.url))
    assert stub.requests == []
    np.testing.assert_allclose(group.rewards, [0.8, 0.0, 0.8])


def test_score_group_fails_loudly_when_the_judge_fails(serve):
    stub = serve(lambda i: Reply(status=502))
    group = _group(["B", "It looks green to me"])
    with pytest.raises(JudgeError):
        score_group(group, fresh_reward_config(stub.url, max_retries=1))
    assert [t.reward_parts for t in group.trajectories] == [None, None]  # nothing half-scored


# --- a judge outage during `zoomrl train` (slow) -----------------------------------------------

FORCING = "actors.forcing:ForcedTurnsLogitsProcessor"
# Two scripted answers per group that rules cannot decide, so every group asks the judge; the stub
# says CORRECT to the first only, so advantages are not all zero.
ANSWERS = [["<think>look</think><answer>It looks green to me</answer><|im_end|>"],
           ["<think>look</think><answer>I see a red one</answer><|im_end|>"]]


@pytest.mark.slow
def test_train_survives_a_judge_blip_and_stops_with_a_checkpoint_when_it_stays_down(serve, tmp_path):
    """The judge fails its first 3 requests (no retries in the client), then answers: the groups
    are requested again and the run goes on, counting them. After step 1 it goes down for good:
    the run ends with a one-line error naming the judge, with a checkpoint to resume from. The API
    key reaches the judge and no file the run writes."""
    stub = serve(lambda i: Reply(status=503) if i < 3 else Reply())
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
