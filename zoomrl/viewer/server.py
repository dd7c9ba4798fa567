"""The server of `zoomrl view`: the page, the trajectories' summaries and records, and their images.

    GET /                        the page (static/index.html, app.js, style.css: no build step)
    GET /api/trajectories        every trajectory's summary: where it is, step or eval set, reward, ...
    GET /api/trajectory?file=F&line=L   one whole record (file F of /api/trajectories, line L)
    GET /files/PATH              a file under the root folder (the images records name, relative
                                 to their file's folder: the page puts the two together)

Only files under the root folder (the run directory, or the trajectories file's folder) and the
page's own static files are served; a path that leaves them (`..`, a symlink out) is refused.
Files are read again when they change, so the page of a running run shows its new steps on reload.
"""

from __future__ import annotations

import json
import mimetypes
import threading
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from zoomrl.records import reward_parts

STATIC = Path(__file__).parent / "static"
TRAJECTORIES = "trajectories.jsonl"
"""A run directory's file; eval writes REPORT.trajectories.jsonl (any '*.trajectories.jsonl')."""


def trajectory_files(target: str | Path) -> tuple[Path, list[Path]]:
    """(root folder, trajectories files) of one file, or of a folder: a run directory (its
    trajectories.jsonl, and validation's val/step-N.trajectories.jsonl) or an eval report's folder."""
    target = Path(target).expanduser().resolve()
    if target.is_file():
        return target.parent, [target]
    if not target.is_dir():
        raise FileNotFoundError(f"{target}: no such run directory or trajectories file")
    files = [p for pattern in (f"*{TRAJECTORIES}", f"*/*{TRAJECTORIES}") for p in sorted(target.glob(pattern))
             if p.is_file()]
    if not files:
        raise FileNotFoundError(f"{target} holds no {TRAJECTORIES} or *.{TRAJECTORIES} (is it a run "
                                "directory, or the folder of an eval report?)")
    return target, files


@dataclass
class Summary:
    """What the list and its filters read of one record."""

    file: int
    line: int
    """1-based line in its file."""
    step: int | None
    """Training step; None for eval and rollout records."""
    eval_set: str | None
    category: str | None
    group_id: str
    index: int
    sample_id: str
    reward: float
    correct: bool
    """RewardParts.correct, as `zoomrl.evaluate.figures` counts it."""
    zooms: int
    """Tool calls that gave back an image."""
    tool_calls: int
    tool_errors: int
    end_reason: str
    policy_version: int
    question: str


def summarize(record: dict[str, Any], file: int, line: int) -> Summary:
    calls = record["tool_calls"]
    return Summary(
        file=file, line=line, step=record.get("step"), eval_set=record.get("eval_set"),
        category=record.get("category"), group_id=record["group_id"], index=record["index"],
        sample_id=record["sample_id"], reward=record["reward"],
        correct=reward_parts(record).correct,
        zooms=sum(1 for c in calls if not c["error"] and c.get("image_index") is not None),
        tool_calls=len(calls), tool_errors=sum(1 for c in calls if c["error"]),
        end_reason=record["end_reason"], policy_version=record["policy_version"],
        question=record["question"][:200])


class Trajectories:
    """The trajectories files, parsed again whenever one changes (size or modification time)."""

    def __init__(self, root: Path, files: list[Path]) -> None:
        self.root, self.files = root, files
        self._parsed: dict[Path, tuple[tuple[int, int], list[dict], list[str]]] = {}
        self._lock = threading.Lock()  # the server answers each request in its own thread

    def _read(self, path: Path) -> tuple[list[dict], list[str]]:
        """(records, problems) of one file; a last line without its newline is still being written."""
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if path in self._parsed and self._parsed[path][0] == key:
                return self._parsed[path][1], self._parsed[path][2]
        records, problems = [], []
        text = path.read_text()
        lines = text.split("\n")
        complete = lines if text.endswith("\n") else lines[:-1]
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                records.append({})
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                records.append({})
                problems.append(f"{path.relative_to(self.root)} line {number}: not JSON ({err})")
        with self._lock:
            self._parsed[path] = (key, records, problems)
        return records, problems

    def summaries(self) -> dict[str, Any]:
        items, problems = [], []
        for file, path in enumerate(self.files):
            records, bad = self._read(path)
            problems += bad
            for line, record in enumerate(records, start=1):
                if not record:
                    continue
                try:
                    items.append(asdict(summarize(record, file, line)))
                except (KeyError, TypeError) as err:
                    problems.append(f"{path.relative_to(self.root)} line {line}: not a trajectory "
                                    f"record (missing {err})")
        return {"root": str(self.root), "files": [p.relative_to(self.root).as_posix() for p in self.files],
                "items": items, "problems": problems}

    def record(self, file: int, line: int) -> dict[str, Any] | None:
        if not 0 <= file < len(self.files):
            return None
        records, _ = self._read(self.files[file])
        return records[line - 1] if 1 <= line <= len(records) and records[line - 1] else None


def inside(folder: Path, relative: str) -> Path | None:
    """The regular file `relative` names under `folder`, or None when there is none or the path
    leaves the folder (`..`, an absolute path, a symlink pointing out)."""
    if not relative or relative.startswith("/") or "\\" in relative or "\0" in relative:
        return None
    path = (folder / relative).resolve()
    return path if path.is_relative_to(folder.resolve()) and path.is_file() else None


class Handler(BaseHTTPRequestHandler):
    trajectories: Trajectories  # set on the subclass `make_server` builds

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        url = urlsplit(self.path)
        path = unquote(url.path)
        if path in ("/", "/index.html"):
            self._file(STATIC / "index.html", cache=False)
        elif path.startswith("/static/"):
            self._file(inside(STATIC, path.removeprefix("/static/")), cache=False)
        elif path == "/api/trajectories":
            self._json(self.trajectories.summaries())
        elif path == "/api/trajectory":
            query = parse_qs(url.query)
            try:
                file, line = int(query["file"][0]), int(query["line"][0])
            except (KeyError, ValueError):
                self.send_error(HTTPStatus.BAD_REQUEST, "needs ?file=N&line=N")
                return
            record = self.trajectories.record(file, line)
            if record is None:
                self.send_error(HTTPStatus.NOT_FOUND, f"no trajectory at file {file} line {line}")
                return
            self._json(record)
        elif path.startswith("/files/"):
            # images are named by their content hash: a name never changes what it holds
            self._file(inside(self.trajectories.root, path.removeprefix("/files/")), cache=True)
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def _json(self, value: Any) -> None:
        self._send(json.dumps(value).encode(), "application/json", cache=False)

    def _file(self, path: Path | None, cache: bool) -> None:
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND, "no such file under the served folder")
            return
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self._send(path.read_bytes(), kind, cache)

    def _send(self, body: bytes, kind: str, cache: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=86400" if cache else "no-cache")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the standard library's name)
        pass  # one line per image request would bury the URL line


def make_server(target: str | Path, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A server for the trajectories of `target` (run directory, eval folder, or one file);
    port 0 takes a free one (`server.server_address` says which)."""
    root, files = trajectory_files(target)
    handler = type("TrajectoryHandler", (Handler,), {"trajectories": Trajectories(root, files)})
    return ThreadingHTTPServer((host, port), handler)
