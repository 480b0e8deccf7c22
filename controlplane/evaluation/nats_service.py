"""`policy.evaluate` on NATS, served by the control plane: the same request and response as
`POST /api/v1/evaluate` (a `nats.micro` service, so `$SRV.PING/INFO/STATS` discovery works).

A request that names an `entrypoint` instead (`{"entrypoint": "...", "input": {...}}`, the bridge's
`bridge.inference.wire.EvaluateRequest`) evaluates that one entrypoint and answers `bridge.inference.wire.EvaluateReply`,
so tools written against the bridge's service keep working. Errors are error replies with
nats.micro's headers (code = the HTTP status the API would give) and the API's JSON error body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import msgspec
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from bridge.inference.wire import EVALUATE_SUBJECT, EvaluateReply
from bridge.inference.wire import EvaluateRequest as EntrypointRequest
from bridge.kernel.errors import BadRequest, GroqPolicyError, error_body, error_description
from bridge.kernel.vocabulary import check_hash
from controlplane.evaluation.schemas import EvaluateRequest

if TYPE_CHECKING:
    from controlplane.evaluation.runtime import PolicyRuntime

log = logging.getLogger(__name__)

SERVICE_NAME = "groqpolicy-policy"
QUEUE_GROUP = "policy-evaluate"
_api = msgspec.json.Decoder(EvaluateRequest)
_entry = msgspec.json.Decoder(EntrypointRequest)
_encode = msgspec.json.Encoder().encode


class _BadRequest(BadRequest):
    pass


async def _respond_error(request: Request, exc: GroqPolicyError) -> None:
    """nats.micro's error reply: the status in Nats-Service-Error-Code, the body as over HTTP."""
    await request.respond_error(str(exc.status), error_description(exc.message), data=error_body(exc))


class EvaluateService:
    def __init__(self, nc: NATS, runtime: PolicyRuntime) -> None:
        self.nc, self.runtime = nc, runtime
        self.service: Service | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> EvaluateService:
        self.service = await add_service(self.nc, name=SERVICE_NAME, version="0.1.0", queue_group=QUEUE_GROUP,
                                         description="groqpolicy: the /api/v1/evaluate pipeline over NATS")
        await self.service.add_endpoint(name="evaluate", subject=EVALUATE_SUBJECT, handler=self._handle)
        await self.nc.flush()
        return self

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def _handle(self, request: Request) -> None:
        task = asyncio.create_task(self._serve(request))  # never hold the subscription's callback
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: Request) -> None:
        try:
            body = await self._answer(request.data)
            await request.respond(body)
        except GroqPolicyError as exc:
            await _respond_error(request, exc)
        except Exception as exc:
            log.exception("policy.evaluate: unexpected error")
            await _respond_error(request, GroqPolicyError(f"evaluation failed: {type(exc).__name__}: {exc}"))

    async def _answer(self, data: bytes) -> bytes:
        try:
            raw = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise _BadRequest(f"request: not JSON ({exc})") from None
        try:
            if isinstance(raw, dict) and "entrypoint" in raw:
                return await self._entrypoint(_entry.decode(data))
            req = _api.decode(data)
        except msgspec.ValidationError as exc:
            raise _BadRequest(f"request: {exc}") from None
        check_hash(req.constitutional_hash)
        response = await self.runtime.pipeline.evaluate(
            req.input_context, policy_types=list(req.policy_types), tier=req.performance_tier,
            constitutional_hash=req.constitutional_hash, explain=req.require_explanation, source="nats")
        return _encode(response)

    async def _entrypoint(self, req: EntrypointRequest) -> bytes:
        check_hash(req.constitutional_hash)
        started = time.perf_counter()
        timeout = min(req.deadline_ms or 5000, 120_000) / 1000
        result = await asyncio.to_thread(self.runtime.evaluator.evaluate, req.entrypoint, req.input, timeout=timeout)
        from bridge.opawasm import UNDEFINED

        return _encode(EvaluateReply(entrypoint=req.entrypoint, result=None if result is UNDEFINED else result,
                                     latency_ms=round((time.perf_counter() - started) * 1000, 3),
                                     revision=self.runtime.evaluator.revision))
