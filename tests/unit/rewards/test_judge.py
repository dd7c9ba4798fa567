"""The LLM judge client against a real OpenAI-compatible HTTP stub on 127.0.0.1.

The stub answers deterministically (CORRECT when the candidate answer mentions green), and each
test scripts its failures: slow replies, 5xx, 401, garbage. It records every request, and how
many it was serving at once.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid

import numpy as np
import pytest

from core.config import JudgeConfig, RewardConfig
from core.types import Group, Sample, Trajectory
from rewards import JudgeClient, JudgeError, score_group
from rewards.judge import judge_client, judge_messages
from tests.helpers.judge_stub import KEY_ENV, SECRET, Reply


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def config(url: str, **overrides) -> JudgeConfig:
    values = dict(base_url=url, model="judge-7b", api_key_env=KEY_ENV, timeout_s=0.5,
                  max_retries=2, backoff_s=0.01, max_concurrency=3, cache_size=100)
    return JudgeConfig(**{**values, **overrides})


# --- verdicts and the request ----------------------------------------------------------------

def test_verdicts_and_what_is_sent(judge_server):
    stub = judge_server()
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


def test_no_key_in_the_environment_sends_no_authorization(judge_server, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    stub = judge_server()
    assert JudgeClient(config(stub.url)).judge("q", "green", "green")
    assert "Authorization" not in stub.requests[0]["headers"]


def test_the_verdict_word_is_found_in_a_longer_reply(judge_server):
    replies = ["Verdict: INCORRECT.", "correct", "The candidate is CORRECT"]
    stub = judge_server(lambda i: Reply(content=replies[i]))
    client = JudgeClient(config(stub.url))
    assert [client.judge("q", "a", p) for p in "xyz"] == [False, True, True]


def test_one_client_per_judge_config_in_a_process(judge_server):
    stub = judge_server()
    assert judge_client(config(stub.url)) is judge_client(config(stub.url))
    assert judge_client(config(stub.url)) is not judge_client(config(stub.url, timeout_s=9.0))


def test_an_empty_base_url_is_no_judge():
    with pytest.raises(ValueError, match="base_url"):
        JudgeClient(JudgeConfig())


# --- failures: retried, then loud ------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_are_retried_until_an_answer(judge_server, status):
    stub = judge_server(lambda i: Reply(status=status) if i < 2 else Reply())
    assert JudgeClient(config(stub.url)).judge("q", "green", "green") is True
    assert len(stub.requests) == 3  # two failures, then the answer (max_retries=2)


def test_a_server_that_always_fails_raises_after_every_retry(judge_server, caplog):
    stub = judge_server(lambda i: Reply(status=500))
    with pytest.raises(JudgeError) as err:
        JudgeClient(config(stub.url)).judge("q", "green", "green")
    assert len(stub.requests) == 3
    assert "3 attempts" in str(err.value) and "HTTP 500" in str(err.value)
    assert SECRET not in str(err.value) and SECRET not in caplog.text
    assert "retry 2/2" in caplog.text  # each retry is logged, without the key


def test_unauthorized_fails_at_once_without_showing_the_key(judge_server, caplog):
    stub = judge_server(lambda i: Reply(status=401))
    with pytest.raises(JudgeError, match="HTTP 401") as err:
        JudgeClient(config(stub.url)).judge("q", "green", "green")
    assert len(stub.requests) == 1  # retrying a refused key cannot help
    assert KEY_ENV in str(err.value)  # names the variable to check...
    assert SECRET not in str(err.value) and SECRET not in caplog.text  # ...never its value


def test_a_slow_reply_times_out_and_is_retried(judge_server):
    stub = judge_server(lambda i: Reply(delay_s=2.0) if i == 0 else Reply())
    start = time.monotonic()
    assert JudgeClient(config(stub.url, timeout_s=0.3)).judge("q", "green", "green") is True
    assert len(stub.requests) == 2 and time.monotonic() - start < 1.5


def test_a_judge_that_always_times_out_raises(judge_server):
    stub = judge_server(lambda i: Reply(delay_s=2.0))
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
def test_unreadable_replies_are_retried_then_raise(judge_server, reply, fragment):
    stub = judge_server(lambda i: reply)
    with pytest.raises(JudgeError, match=fragment):
        JudgeClient(config(stub.url)).judge("q", "green", "green")
    assert len(stub.requests) == 3


def test_an_unreachable_judge_raises_after_retries():
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(JudgeError, match="3 attempts"):
        JudgeClient(config(f"http://127.0.0.1:{port}/v1")).judge("q", "green", "green")


def test_backoff_doubles_between_retries(judge_server):
    stub = judge_server(lambda i: Reply(status=500))
    start = time.monotonic()
    with pytest.raises(JudgeError):
        JudgeClient(config(stub.url, max_retries=3, backoff_s=0.1)).judge("q", "a", "b")
    # Waits of 0.1, 0.2, 0.4 s, each times a jitter in [0.5, 1]: at least 0.35 s, at most 0.7 s.
    assert 0.35 <= time.monotonic() - start < 0.7 + 1.0


# --- cache and concurrency -------------------------------------------------------------------

def test_each_distinct_item_is_asked_once(judge_server):
    stub = judge_server()
    client = JudgeClient(config(stub.url))
    items = [("q", "green", p) for p in ["green", "red", "green", "teal", "red", "green"]]
    assert client.judge_all(items) == [True, False, True, False, False, True]
    assert sorted(stub.candidates()) == ["green", "red", "teal"]
    assert client.judge("q", "green", "teal") is False and len(stub.requests) == 3  # cached
    client.judge("another question", "green", "teal")  # the key is (question, answer, prediction)
    client.judge("q", "teal", "teal")
    assert len(stub.requests) == 5
    assert client.judge_all([]) == []


def test_the_cache_keeps_the_most_recently_used(judge_server):
    stub = judge_server()
    client = JudgeClient(config(stub.url, cache_size=2))
    for prediction in ["a", "b", "a", "c", "a"]:  # 'a' is used again, so 'b' is dropped for 'c'
        client.judge("q", "green", prediction)
    assert stub.candidates() == ["a", "b", "c"]
    client.judge("q", "green", "b")
    assert stub.candidates() == ["a", "b", "c", "b"]


def test_requests_in_flight_never_exceed_max_concurrency(judge_server):
    stub = judge_server(lambda i: Reply(delay_s=0.3))
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


def test_score_group_asks_the_judge_only_what_rules_cannot_decide(judge_server):
    stub = judge_server()
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


def test_score_group_never_asks_when_rules_decide_everything(judge_server):
    stub = judge_server()
    group = score_group(_group(["B", "A", "(b) green"]), fresh_reward_config(stub.url))
    assert stub.requests == []
    np.testing.assert_allclose(group.rewards, [0.8, 0.0, 0.8])


def test_score_group_fails_loudly_when_the_judge_fails(judge_server):
    stub = judge_server(lambda i: Reply(status=502))
    group = _group(["B", "It looks green to me"])
    with pytest.raises(JudgeError):
        score_group(group, fresh_reward_config(stub.url, max_retries=1))
    assert [t.reward_parts for t in group.trajectories] == [None, None]  # nothing half-scored


# --- a judge outage during `zoomrl train` (slow) -----------------------------------------------
