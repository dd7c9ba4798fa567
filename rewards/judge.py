"""An LLM judge over any OpenAI-compatible `/chat/completions` endpoint, for what rules cannot decide.

Failing loudly is the point: after `max_retries` retries (timeouts, connection errors, HTTP 429 and
5xx, malformed or unreadable replies) it raises `JudgeError`, and so does any other HTTP error at
once (401, 404: retrying cannot help). A peer scored such answers 0 and another -999, which
silently skews every advantage in the group. The API key is read from the environment variable
named in the config at each request and never logged or put in an error.

One client per process (`judge_client`) holds a bounded verdict cache and a semaphore bounding
the requests in flight; both only make repeated or parallel asks cheaper and safer, never change
a verdict.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from core.config import JudgeConfig

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You grade answers. You are given a question, its reference answer and a candidate answer. "
    "Decide whether the candidate gives the same answer as the reference. Ignore wording, letter "
    "case, formatting and extra explanation; for a multiple-choice question the option letter "
    "and the option text are the same answer. Reply with one word: CORRECT or INCORRECT."
)
_EXAMPLES = [
    ("What colour is the umbrella?", "red", "The umbrella is dark red.", "CORRECT"),
    ("How many birds are on the wire?", "3", "There are four birds.", "INCORRECT"),
]
_VERDICT = re.compile(r"\b(INCORRECT|CORRECT)\b")

Item = tuple[str, str, str]  # (question, reference answer, prediction)


class JudgeError(RuntimeError):
    """The judge gave no verdict after every retry; the reward task must fail, not score 0."""


class _Retryable(Exception):
    """One attempt failed in a way another attempt may not."""


def _user_message(question: str, answer: str, prediction: str) -> str:
    return f"Question: {question}\nReference answer: {answer}\nCandidate answer: {prediction}"


def judge_messages(question: str, answer: str, prediction: str) -> list[dict[str, str]]:
    """The chat sent for one verdict: instructions, two worked examples, the case."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for example_q, example_a, example_p, verdict in _EXAMPLES:
        messages.append({"role": "user", "content": _user_message(example_q, example_a, example_p)})
        messages.append({"role": "assistant", "content": verdict})
    messages.append({"role": "user", "content": _user_message(question, answer, prediction)})
    return messages


class JudgeClient:
    """Verdicts from one endpoint, cached, with retries and bounded concurrency."""

    def __init__(self, cfg: JudgeConfig) -> None:
        if not cfg.base_url:
            raise ValueError("reward.judge.base_url is empty: there is no judge to ask")
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.model = cfg.model
        self.api_key_env = cfg.api_key_env
        self.timeout_s = cfg.timeout_s
        self.max_retries = cfg.max_retries
        self.backoff_s = cfg.backoff_s
        self.max_concurrency = cfg.max_concurrency
        self.cache_size = cfg.cache_size
        self._in_flight = threading.BoundedSemaphore(cfg.max_concurrency)
        self._cache: OrderedDict[Item, bool] = OrderedDict()
        self._lock = threading.Lock()

    def judge(self, question: str, answer: str, prediction: str) -> bool:
        """Whether `prediction` gives the same answer as `answer`; raises JudgeError."""
        key = (question, answer, prediction)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        verdict = self._ask(judge_messages(question, answer, prediction))
        with self._lock:
            self._cache[key] = verdict
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return verdict

    def judge_all(self, items: list[Item]) -> list[bool]:
        """Verdicts for many items, each distinct one asked once, up to max_concurrency at a time."""
        unique = list(dict.fromkeys(items))
        if not unique:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(unique))) as pool:
            verdicts = dict(zip(unique, pool.map(lambda item: self.judge(*item), unique),
                                strict=True))
        return [verdicts[item] for item in items]

    def _ask(self, messages: list[dict[str, str]]) -> bool:
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
                log.warning("judge %s: %s; retry %d/%d in %.2fs", self.url, last_error, attempt,
                            self.max_retries, delay)
                time.sleep(delay)
            try:
                with self._in_flight:
                    reply = self._post(messages)
                return _verdict(reply)
            except _Retryable as err:
                last_error = str(err)
        raise JudgeError(f"judge {self.url} gave no verdict after {self.max_retries + 1} "
                         f"attempts; last error: {last_error}")

    def _post(self, messages: list[dict[str, str]]) -> str:
        body = {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": 8}
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read())
            return payload["choices"][0]["message"]["content"]
        except urllib.error.HTTPError as err:
            if err.code == 429 or err.code >= 500:
                raise _Retryable(f"HTTP {err.code}") from None
            raise JudgeError(f"judge {self.url} refused the request: HTTP {err.code} "
                             f"{err.reason} (check reward.judge.base_url, model and "
                             f"${self.api_key_env})") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            raise _Retryable(f"{type(err).__name__}: {err}") from None
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise _Retryable(f"malformed reply ({type(err).__name__}: {err})") from None


def _verdict(reply: str) -> bool:
    match = _VERDICT.search(str(reply).upper())
    if match is None:
        raise _Retryable(f"reply {str(reply)[:40]!r} is neither CORRECT nor INCORRECT")
    return match.group(1) == "CORRECT"


_clients: dict[tuple, JudgeClient] = {}
_clients_lock = threading.Lock()


def judge_client(cfg: JudgeConfig) -> JudgeClient:
    """The process's client for this judge config (so its cache outlives one reward call)."""
    key = (cfg.base_url, cfg.model, cfg.api_key_env, cfg.timeout_s, cfg.max_retries, cfg.backoff_s,
           cfg.max_concurrency, cfg.cache_size)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = JudgeClient(cfg)
        return _clients[key]
