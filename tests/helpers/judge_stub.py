"""A real OpenAI-compatible HTTP judge stub on 127.0.0.1 (the 72B judge cannot run here).

It answers deterministically (CORRECT when the candidate answer mentions green), and each test
scripts its failures: slow replies, 5xx, 401, garbage. It records every request, and how many it
was serving at once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

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
def judge_server():
    """judge_server(plan) -> a running Stub; servers stop at teardown."""
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
