"""GroqCloud's Batch API, emulated: the files endpoints and batch objects the `groq` SDK speaks
(`groq.resources.files`, `groq.resources.batches`).

    POST   /openai/v1/files                 multipart (file, purpose=batch) -> file object
    GET    /openai/v1/files[/{id}]          list / info
    GET    /openai/v1/files/{id}/content    the bytes (application/octet-stream)
    DELETE /openai/v1/files/{id}            {"id", "object": "file", "deleted": true}
    POST   /openai/v1/batches               {input_file_id, endpoint, completion_window, metadata}
    GET    /openai/v1/batches[/{id}]        list / retrieve
    POST   /openai/v1/batches/{id}/cancel

A batch goes `validating` -> `in_progress` -> `finalizing` -> `completed` (or `failed` when the input
does not validate, `cancelling` -> `cancelled`), with the `*_at` timestamps and `request_counts` on
the way. Each input line, `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`,
is answered by the emulator's own chat handler (same verdicts, latency and faults as a direct call),
`parallelism` lines at a time. The output file holds a line per success,
`{"id", "custom_id", "response": {"status_code": 200, "request_id", "body": <chat.completion>},
"error": null}`; the error file one per failed request, with the error body as `response.body`.

`expire_next(n)`: the next batch answers its first `n` lines and then runs out of its completion
window, as GroqCloud's do: status `expired`, the answered lines in the output file, every other one
in the error file as `{"custom_id", "response": null, "error": {"code": "batch_expired", ...}}`.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from bridge.emulator.chat import GroqAPIError
from bridge.kernel.errors import error_document

Chat = Callable[[bytes], Awaitable[tuple[int, Any, dict[str, Any]]]]
"""The emulator's chat handler for one request body: (status, payload, headers)."""
ENDPOINT = "/v1/chat/completions"
WINDOW_RE = re.compile(r"^(\d+)([hd])$")
MIN_WINDOW_S, MAX_WINDOW_S = 24 * 3600, 7 * 24 * 3600


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def obj(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.content), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose}


def _window_s(window: Any) -> int:
    m = WINDOW_RE.match(window) if isinstance(window, str) else None
    seconds = int(m.group(1)) * (3600 if m.group(2) == "h" else 86400) if m else 0
    if not MIN_WINDOW_S <= seconds <= MAX_WINDOW_S:
        raise GroqAPIError(400, f"completion_window: {window!r} is not supported (durations from 24h to 7d)")
    return seconds


def _multipart(body: bytes, content_type: str) -> dict[str, tuple[str, bytes]]:
    """{field: (filename, bytes)} of a multipart/form-data body."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise GroqAPIError(400, "expected a multipart/form-data body with 'file' and 'purpose'")
    out = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            out[name] = (part.get_filename() or "", payload if isinstance(payload, bytes) else b"")
    return out


class BatchService:
    """Files and batches held in memory; `parallelism` input lines are answered at a time."""

    def __init__(self, chat: Chat, parallelism: int = 256) -> None:
        self.chat = chat
        self.parallelism = parallelism
        self.files: dict[str, _File] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._expire_after: int | None = None

    def expire_next(self, answered: int) -> None:
        """The next batch expires after answering `answered` lines (tests of the expired path)."""
        self._expire_after = answered

    async def route(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, dict]:
        parts = path.removeprefix("/openai/v1/").split("/")
        kind, rest = parts[0], parts[1:]
        if kind == "files":
            return 200, self._files(method, rest, body, headers), {}
        if method == "POST" and not rest:
            return 200, self._create(body), {}
        if method == "GET" and not rest:
            return 200, {"object": "list", "data": list(self.batches.values())}, {}
        batch = self.batches.get(rest[0])
        if batch is None:
            raise GroqAPIError(404, f"batch {rest[0]!r} not found", code="not_found")
        if method == "GET" and len(rest) == 1:
            return 200, batch, {}
        if method == "POST" and rest[1:] == ["cancel"]:
            return 200, self._cancel(batch), {}
        raise GroqAPIError(404, f"Unknown request URL: {method} {path}", code="unknown_url")

    # ---- files ------------------------------------------------------------------------------
    def _files(self, method: str, rest: list[str], body: bytes, headers: dict[str, str]) -> Any:
        if method == "POST" and not rest:
            form = _multipart(body, headers.get("content-type", ""))
            purpose = form.get("purpose", ("", b""))[1].decode()
            if purpose != "batch":
                raise GroqAPIError(400, f"purpose: {purpose!r} is not supported (want 'batch')")
            if "file" not in form:
                raise GroqAPIError(400, "file: missing")
            return self._store(form["file"][0] or "upload.jsonl", "batch", form["file"][1]).obj()
        if method == "GET" and not rest:
            return {"object": "list", "data": [f.obj() for f in self.files.values()]}
        f = self.files.get(rest[0])
        if f is None:
            raise GroqAPIError(404, f"file {rest[0]!r} not found", code="not_found")
        if method == "GET" and rest[1:] == ["content"]:
            return f.content  # bytes: sent as they are
        if method == "GET" and len(rest) == 1:
            return f.obj()
        if method == "DELETE" and len(rest) == 1:
            del self.files[f.id]
            return {"id": f.id, "object": "file", "deleted": True}
        raise GroqAPIError(404, f"Unknown request URL: {method} /openai/v1/files/{'/'.join(rest)}", code="unknown_url")

    def _store(self, filename: str, purpose: str, content: bytes) -> _File:
        f = _File(id=f"file_{uuid.uuid4().hex[:26]}", filename=filename, purpose=purpose, content=content)
        self.files[f.id] = f
        return f

    # ---- batches ----------------------------------------------------------------------------
    def _create(self, body: bytes) -> dict[str, Any]:
        try:
            req = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise GroqAPIError(400, "We could not parse the JSON body of your request.", code="invalid_json") from exc
        if req.get("endpoint") != ENDPOINT:
            raise GroqAPIError(400, f"endpoint: {req.get('endpoint')!r} is not supported (want {ENDPOINT!r})")
        window = _window_s(req.get("completion_window"))
        if req.get("input_file_id") not in self.files:
            raise GroqAPIError(400, f"input_file_id: file {req.get('input_file_id')!r} not found")
        now = int(time.time())
        batch = {"id": f"batch_{uuid.uuid4().hex[:26]}", "object": "batch", "endpoint": ENDPOINT, "errors": None,
                 "input_file_id": req["input_file_id"], "completion_window": req["completion_window"],
                 "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": now,
                 "in_progress_at": None, "expires_at": now + window, "finalizing_at": None, "completed_at": None,
                 "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": req.get("metadata")}
        self.batches[batch["id"]] = batch
        self._tasks[batch["id"]] = asyncio.get_running_loop().create_task(self._run(batch))
        return batch

    def _cancel(self, batch: dict[str, Any]) -> dict[str, Any]:
        if batch["status"] in ("validating", "in_progress"):
            batch["status"], batch["cancelling_at"] = "cancelling", int(time.time())
            task = self._tasks.get(batch["id"])
            if task is not None:
                task.cancel()
        return batch

    def _validate(self, content: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(the requests, the errors) of an input file, as GroqCloud reports them: line by line."""
        lines, errors, seen = [], [], set()
        for n, raw in enumerate(content.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                errors.append({"code": "invalid_json_line", "line": n, "message": "line is not valid JSON"})
                continue
            cid = line.get("custom_id") if isinstance(line, dict) else None
            if not isinstance(cid, str) or not cid:
                errors.append({"code": "missing_required_parameter", "line": n, "param": "custom_id",
                               "message": "custom_id: missing"})
            elif cid in seen:
                errors.append({"code": "duplicate_custom_id", "line": n, "param": "custom_id",
                               "message": f"custom_id {cid!r} appears more than once"})
            elif line.get("method") != "POST" or line.get("url") != ENDPOINT or not isinstance(line.get("body"), dict):
                errors.append({"code": "invalid_request", "line": n,
                               "message": f"each line needs method POST, url {ENDPOINT} and a body object"})
            else:
                seen.add(cid)
                lines.append(line)
        if not lines and not errors:
            errors.append({"code": "empty_file", "line": 0, "message": "the input file has no requests"})
        return lines, errors

    async def _run(self, batch: dict[str, Any]) -> None:
        lines, errors = self._validate(self.files[batch["input_file_id"]].content)
        if errors:
            batch.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": errors})
            return
        batch.update(status="in_progress", in_progress_at=int(time.time()))
        batch["request_counts"]["total"] = len(lines)
        out: list[bytes] = []
        err: list[bytes] = []
        expire_after, self._expire_after = self._expire_after, None
        try:
            await self._answer_all(batch, lines[:expire_after], out, err)
        except asyncio.CancelledError:
            self._finish(batch, out, err, status="cancelled", at="cancelled_at")
            return
        if expire_after is not None:
            for line in lines[expire_after:]:
                err.append(msgspec.json.encode({"id": f"batch_req_{uuid.uuid4().hex[:26]}", "custom_id": line["custom_id"],
                                                "response": None, "error": {"code": "batch_expired", "message":
                                                "This request could not be executed before the completion window expired."}}))
                batch["request_counts"]["failed"] += 1
            self._finish(batch, out, err, status="expired", at="expired_at")
            return
        batch.update(status="finalizing", finalizing_at=int(time.time()))
        self._finish(batch, out, err, status="completed", at="completed_at")

    async def _answer_all(self, batch: dict[str, Any], lines: list[dict[str, Any]], out: list[bytes],
                          err: list[bytes]) -> None:
        slots = asyncio.Semaphore(self.parallelism)
        counts = batch["request_counts"]

        async def one(line: dict[str, Any]) -> None:
            async with slots:
                request_id = f"req_{uuid.uuid4().hex[:26]}"
                try:
                    status, payload, _ = await self.chat(msgspec.json.encode(line["body"]))
                except GroqAPIError as exc:
                    status, payload = exc.status, error_document(exc)
            row = {"id": f"batch_req_{uuid.uuid4().hex[:26]}", "custom_id": line["custom_id"],
                   "response": {"status_code": status, "request_id": request_id, "body": payload}, "error": None}
            (out if status == 200 else err).append(msgspec.json.encode(row))
            counts["completed" if status == 200 else "failed"] += 1

        await asyncio.gather(*(one(line) for line in lines))

    def _finish(self, batch: dict[str, Any], out: list[bytes], err: list[bytes], *, status: str, at: str) -> None:
        if out:
            batch["output_file_id"] = self._store(f"{batch['id']}_output.jsonl", "batch_output", b"\n".join(out) + b"\n").id
        if err:
            batch["error_file_id"] = self._store(f"{batch['id']}_error.jsonl", "batch_output", b"\n".join(err) + b"\n").id
        batch.update(status=status, **{at: int(time.time())})
        self._tasks.pop(batch["id"], None)
