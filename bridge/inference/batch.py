"""Bulk judgments through GroqCloud's Batch API, at its batch price.

    client = BatchClient(groq.AsyncGroq(...), default_catalog())
    replies = await client.submit([InferRequest(question=..., context=...), ...], tier="fast",
                                  progress=lambda p: print(p.status, p.done, p.total))

`submit` writes one JSONL line per request (the same chat-completion body a worker's direct call
sends: `bridge.inference.completion`), uploads it (`files.create`, purpose `batch`), creates the
batch (`batches.create`, `completion_window`), polls `batches.retrieve` until the batch ends
(reporting each change of status or count to `progress`), then downloads the output and error files
(`files.content`) and answers with one `InferReply` per request, in the order given.

Fail closed, as a worker does: a request whose line failed, whose answer is not a verdict, or that
the batch never answered (failed, expired, cancelled) gets `review` with `degraded: true` and the
reason; never `allow`. A batch that cannot be submitted at all raises `BatchError`. Costs are the
catalog's list price times its `batch_discount`. Tier `auto` routes each request by context size
and schema (`bridge.inference.routing`; no deadline: the batch's window is the deadline).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import groq
import msgspec
from groq.types.chat import ChatCompletion

from bridge.inference.catalog import Catalog
from bridge.inference.completion import BadAnswer, completion_params, read_verdict
from bridge.inference.latency import LatencyBook
from bridge.inference.routing import Router
from bridge.inference.wire import InferReply, InferRequest, Route, Usage, validate_request
from bridge.kernel.errors import GroqPolicyError
from bridge.kernel.vocabulary import AUTO_TIER

ENDPOINT: Final = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
UNBOUNDED_MS = 24 * 3600 * 1000.0  # a batch's deadline is its completion window, not a caller's


class BatchError(GroqPolicyError):
    """The batch could not be submitted or read back (the Batch API refused or failed)."""

    status = 502
    type = "batch_error"
    code = "batch_error"


@dataclass(frozen=True)
class BatchProgress:
    batch_id: str
    status: str
    done: int
    failed: int
    total: int
    elapsed_s: float


@dataclass(frozen=True)
class _Line:
    custom_id: str
    model: str
    tier: str
    route: Route | None
    answer: str = "verdict"


class BatchClient:
    """Submits judgments as one batch job and waits for them. `poll_s`: the first wait between
    status checks, doubled up to `max_poll_s` (a real batch takes minutes to hours)."""

    def __init__(self, client: groq.AsyncGroq, catalog: Catalog, *, completion_window: str = "24h",
                 poll_s: float = 0.05, max_poll_s: float = 30.0, emulated: bool = False) -> None:
        self.client = client
        self.catalog = catalog
        self.completion_window = completion_window
        self.poll_s, self.max_poll_s = poll_s, max_poll_s
        self.emulated = emulated
        self.router = Router(catalog, LatencyBook({m: s.typical_latency_ms for m, s in catalog.models.items()}))
        self.last_batch_id = ""

    def _line(self, i: int, tier: str, req: InferRequest) -> tuple[_Line, bytes]:
        validate_request(req)
        route = self.router.choose(req, UNBOUNDED_MS) if tier == AUTO_TIER else None
        chosen = route.tier if route else tier
        model = (self.catalog.resolve(req.model)[0] if req.model else None) or \
            (route.models[0] if route else self.catalog.tier(chosen).models[0])
        line = _Line(f"j-{i}", model, chosen, route, req.answer)
        body = {"custom_id": line.custom_id, "method": "POST", "url": ENDPOINT,
                "body": completion_params(self.catalog, model, chosen, req)}
        return line, msgspec.json.encode(body)

    async def submit(self, requests: Sequence[InferRequest], *, tier: str = "fast",
                     progress: Callable[[BatchProgress], None] | None = None,
                     metadata: dict[str, str] | None = None) -> list[InferReply]:
        """One reply per request, in order (see the module's docstring for failures)."""
        if not requests:
            return []
        started = time.perf_counter()
        lines, raw = zip(*(self._line(i, tier, r) for i, r in enumerate(requests)), strict=True)
        try:
            upload = await self.client.files.create(file=("judgments.jsonl", b"\n".join(raw) + b"\n"), purpose="batch")
            if not upload.id:
                raise BatchError("files.create: the upload has no id")
            batch = await self.client.batches.create(input_file_id=upload.id, endpoint=ENDPOINT,
                                                     completion_window=self.completion_window, metadata=metadata)
            self.last_batch_id = batch.id
            status, output_id, error_id, why = await self._wait(batch.id, started, progress)
            rows = {**await self._rows(error_id), **await self._rows(output_id)}
        except groq.APIError as exc:
            raise BatchError(f"batch API: {exc}") from exc
        return [self._reply(line, rows.get(line.custom_id), status, why, started) for line in lines]

    async def _wait(self, batch_id: str, started: float, progress: Callable[[BatchProgress], None] | None,
                    ) -> tuple[str, str | None, str | None, str]:
        """Poll until the batch ends: (status, output file, error file, why it failed)."""
        wait, seen = self.poll_s, None
        while True:
            b = await self.client.batches.retrieve(batch_id)
            counts = b.request_counts
            done, failed, total = (counts.completed, counts.failed, counts.total) if counts else (0, 0, 0)
            if progress is not None and (b.status, done, failed) != seen:
                progress(BatchProgress(b.id, b.status, done, failed, total, time.perf_counter() - started))
            seen = (b.status, done, failed)
            if b.status in TERMINAL:
                errors = b.errors.data if b.errors and b.errors.data else []
                why = "; ".join(f"line {e.line}: {e.message}" for e in errors) or f"batch {b.status}"
                return b.status, b.output_file_id, b.error_file_id, why
            await asyncio.sleep(wait)
            wait = min(wait * 2, self.max_poll_s)

    async def _rows(self, file_id: str | None) -> dict[str, dict[str, Any]]:
        if not file_id:
            return {}
        content = await (await self.client.files.content(file_id)).read()
        rows = {}
        for raw in content.splitlines():
            if raw.strip():
                row = msgspec.json.decode(raw)
                rows[row["custom_id"]] = row
        return rows

    def _reply(self, line: _Line, row: dict[str, Any] | None, status: str, why: str, started: float) -> InferReply:
        route: Any = line.route if line.route is not None else msgspec.UNSET
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        response = (row or {}).get("response") or {}
        problem = ""
        if row is None:
            problem = f"{line.model}: no answer in the batch ({why})"
        elif response.get("status_code") != 200:
            err = ((response.get("body") or {}).get("error") or row.get("error") or {})
            problem = f"{line.model}: {response.get('status_code', 'error')} {err.get('message', '')}".strip()
        else:
            try:
                completion = ChatCompletion.model_validate(response.get("body"))
                verdict = read_verdict(completion.choices[0].message.content if completion.choices else None,
                                       line.answer)
            except (BadAnswer, ValueError) as exc:  # pydantic's ValidationError is a ValueError
                problem = f"{line.model}: {exc}"
            else:
                return InferReply(decision=verdict.decision, confidence=verdict.confidence, rationale=verdict.rationale,
                                  findings=verdict.findings,
                                  model=completion.model or line.model, tier=line.tier, emulated=self.emulated,
                                  usage=self._usage(completion, line.model), latency_ms=latency_ms, route=route)
        return InferReply(decision="review", confidence=0.0, rationale="no valid answer from the batch; failing closed "
                          "to review", model="", tier=line.tier, emulated=self.emulated, latency_ms=latency_ms,
                          degraded=True, reasons=[problem], route=route)

    def _usage(self, completion: ChatCompletion, model: str) -> Usage:
        u = completion.usage
        if u is None:
            return Usage(attempts=1)
        cost = self.catalog.models[model].cost_usd(u.prompt_tokens, u.completion_tokens) * self.catalog.batch_discount
        return Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, total_tokens=u.total_tokens,
                     queue_time=u.queue_time or 0.0, prompt_time=u.prompt_time or 0.0,
                     completion_time=u.completion_time or 0.0, total_time=u.total_time or 0.0,
                     cost_usd=round(cost, 9), attempts=1)
