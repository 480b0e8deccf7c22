"""`policy.evaluate` on NATS, served by the control plane: the same request and response as
`POST /api/v1/evaluate` (a `nats.micro` service, so `$SRV.PING/INFO/STATS` discovery works).

One request type on the subject (`EvaluateRequest`), decoded once. Errors go through nats.micro's
error path (`respond_error`): the HTTP status the API would give in `Nats-Service-Error-Code`, and
the API's JSON error body. A request in the retired `{"entrypoint": ...}` form is refused as any
other body with an unknown field is (400).

Requests are answered from tasks, so that a slow evaluation does not hold up the ones behind it:
nats.micro's own counters then time only the hand-off and see no error. The endpoint's `data` in
`$SRV.STATS` says what happened instead: answers, error replies (and the last one), and the time
from receipt to reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointStats, Service

from bridge.inference.micro import end_service, respond_error
from bridge.inference.natsclient import confirmed
from bridge.kernel.errors import REQUEST_ID_HEADER, BadRequest, Conflict, GroqPolicyError, request_id
from bridge.kernel.untrusted import check_json_depth
from bridge.kernel.vocabulary import check_hash
from controlplane.evaluation.pipeline import Pipeline
from controlplane.evaluation.schemas import EVALUATE_SUBJECT, EvaluateRequest
from controlplane.evaluation.spread import CHUNK_SUBJECT, decode_chunk, encode
from controlplane.infra.nats import NatsConnection

log = logging.getLogger(__name__)

SERVICE_NAME = "groqpolicy-policy"
QUEUE_GROUP = "policy-evaluate"
_decode = msgspec.json.Decoder(EvaluateRequest).decode
_encode = msgspec.json.Encoder().encode


def decode_request(data: bytes) -> EvaluateRequest:
    """The request, or BadRequest (400) saying what is wrong with it."""
    check_json_depth(data, "request")
    try:
        return _decode(data)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: tested first
        raise BadRequest(f"request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request: not JSON ({exc})") from None


class EvaluateService:
    def __init__(self, nats: NatsConnection, pipeline: Pipeline) -> None:
        self._nats, self.pipeline = nats, pipeline
        self.service: Service | None = None
        self._nc: NatsClient | None = None  # the connection the service was added on
        self._tasks: set[asyncio.Task] = set()
        self.answered = 0  # replies sent, error replies included
        self.errors = 0
        self.last_error = ""
        self.processing_ns = 0  # receipt to reply, summed over the answered requests

    async def start(self) -> None:
        nc = self._nc = self._nats.client
        self.service = await add_service(nc, name=SERVICE_NAME, version="0.1.0", queue_group=QUEUE_GROUP,
                                         description="groqpolicy: the /api/v1/evaluate pipeline over NATS",
                                         stats_handler=self._stats)
        await self.service.add_endpoint(name="evaluate", subject=EVALUATE_SUBJECT, handler=self._handle)
        if self.pipeline is not None and self.pipeline.spread.enabled:  # another process's share of a batch (`spread`)
            await self.service.add_endpoint(name="chunk", subject=CHUNK_SUBJECT, handler=self._handle_chunk)
        await confirmed(nc)  # subscribed on the server before the control plane says it is ready

    async def stop(self) -> None:
        service, self.service = self.service, None
        if service is not None and self._nc is not None:
            await end_service(service, self._nc, SERVICE_NAME)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    def _stats(self, _endpoint: EndpointStats) -> dict[str, Any]:
        answered = self.answered
        return {"answered": answered, "errors": self.errors, "last_error": self.last_error,
                "processing_time_ns": self.processing_ns,
                "average_processing_time_ns": self.processing_ns // answered if answered else 0,
                "in_progress": len(self._tasks)}

    async def _handle(self, request: Request) -> None:
        # answered from a task: the subscription delivers its messages one at a time
        task = asyncio.create_task(self._serve(request, time.perf_counter_ns()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: Request, received_ns: int) -> None:
        try:
            req = decode_request(request.data)
            check_hash(req.constitutional_hash)
            response = await self.pipeline.evaluate(
                req.input_context, policy_types=list(req.policy_types), tier=req.performance_tier,
                constitutional_hash=req.constitutional_hash, explain=req.require_explanation, source="nats")
            await request.respond(_encode(response))
        except GroqPolicyError as exc:
            await self._error(request, exc)
        except Exception as exc:  # a bug: the caller gets the request id, the log the traceback
            rid = request_id((request.headers or {}).get(REQUEST_ID_HEADER))
            log.error("request %s: policy.evaluate failed: %s: %s", rid, type(exc).__name__, exc, exc_info=exc)
            await self._error(request, GroqPolicyError(
                f"evaluation failed: internal error (request id {rid}: the control plane's log has the details)",
                type_="InternalError"), rid)
        self.answered += 1
        self.processing_ns += time.perf_counter_ns() - received_ns

    async def _handle_chunk(self, request: Request) -> None:
        task = asyncio.create_task(self._serve_chunk(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_chunk(self, request: Request) -> None:
        spread, evaluator = self.pipeline.spread, self.pipeline.evaluator
        try:
            try:
                chunk = decode_chunk(request.data)
            except msgspec.DecodeError as exc:
                raise BadRequest(f"chunk: {exc}") from None
            if not spread.enabled or spread.own(request.headers):
                raise Conflict("chunk: the origin decides its own share already")
            if chunk.revision != (evaluator.revision or ""):
                raise Conflict(f"chunk: for revision {chunk.revision!r}, this process serves {evaluator.revision!r}")
            check_hash(chunk.constitutional_hash)
            budget = spread.budget(request.headers)
            try:
                responses = await asyncio.wait_for(spread.decide(chunk), budget)
            except TimeoutError:  # the origin decides it itself now: stop, and free the evaluation threads
                log.warning("policy.evaluate.chunk: %d contexts not decided within the origin's %.1f s; stopped",
                            len(chunk.contexts), budget)
                return
            await request.respond(encode(responses))
        except GroqPolicyError as exc:  # Saturated too: the origin then decides the chunk itself
            await respond_error(request, exc)
        except Exception as exc:  # a bug: the origin decides the chunk itself; the log has the traceback
            log.error("policy.evaluate.chunk failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
            await respond_error(request, GroqPolicyError("chunk: internal error", type_="InternalError"))

    async def _error(self, request: Request, exc: GroqPolicyError, rid: str | None = None) -> None:
        self.errors += 1
        self.last_error = f"{exc.status} {type(exc).__name__}: {exc.message}"
        await respond_error(request, exc, rid)  # a 5xx is logged there, with its request id
