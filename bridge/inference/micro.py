"""The skeleton of a `nats.micro` service that answers from tasks: start, spawn, error replies, stop.

nats-py runs a subscription's callback one message at a time, so a handler that awaits a slow
answer holds up every message behind it. A `TaskService` handler therefore hands the slow part to
`spawn` (or is wrapped whole by `detached`) and returns at once; `stop` ends the service and then
gives the answers in progress a grace period.

Errors go back through nats.micro's own error reply (`respond_error`): the HTTP status the error
maps to in `Nats-Service-Error-Code`, its message in `Nats-Service-Error`, and the family's error
body as the data, so a gateway passes the reply through to HTTP unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig

from bridge.inference.natsclient import confirmed
from bridge.kernel.errors import (
    REQUEST_ID_HEADER,
    GroqPolicyError,
    error_body,
    error_description,
    error_document,
    request_id,
)

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode
UNSUBSCRIBE_WAIT_S = 1  # s, whole (nats-py's flush takes an int): a service's end first pings NATS this long
SERVICE_STOP_S = 5.0  # then waits this long for the service's subscriptions to drain

Handler = Callable[[Request], Awaitable[None]]
"""What nats.micro calls for each request."""
Serve = Callable[[Request], Coroutine[Any, Any, None]]
"""An answer to one request, run as a task: it replies (or replies with an error) itself."""


async def respond_error(request: Request, exc: GroqPolicyError, rid: str | None = None) -> None:
    """Answer `request` with `exc` as nats.micro's error reply (status code, description, error body).
    A 5xx is logged with a request id (the caller's `X-Request-Id` header, else a new one), which
    the reply carries in that header and in its body (`rid`: the id a caller logged already)."""
    if exc.status < 500:
        await request.respond_error(str(exc.status), error_description(exc.message), data=error_body(exc))
        return
    rid = rid or request_id((request.headers or {}).get(REQUEST_ID_HEADER))
    log.warning("request %s: %s answered %d %s: %s", rid, request.subject, exc.status, exc.kind, exc.message)
    document = error_document(exc)
    document["error"]["request_id"] = rid
    await request.respond_error(str(exc.status), error_description(exc.message), data=_encode(document),
                                headers={REQUEST_ID_HEADER: rid})


class TaskService:
    """A nats.micro service (`config`, `endpoints`) plus the tasks its handlers spawned.

        svc = TaskService(nc, ServiceConfig(name=..., version=..., queue_group=...))
        svc.add(EndpointConfig(name="evaluate", subject="policy.evaluate", handler=svc.detached(serve)))
        await svc.start()
    """

    def __init__(self, nc: NatsClient, config: ServiceConfig, endpoints: Sequence[EndpointConfig] = ()) -> None:
        self.nc = nc
        self.config = config
        self.endpoints = list(endpoints)
        self.service: Service | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_progress(self) -> int:
        """Spawned answers not finished yet."""
        return len(self._tasks)

    def add(self, endpoint: EndpointConfig) -> None:
        """An endpoint to open at `start`."""
        self.endpoints.append(endpoint)

    async def start(self) -> TaskService:
        self.service = await add_service(self.nc, self.config)
        for endpoint in self.endpoints:
            await self.service.add_endpoint(endpoint)
        await confirmed(self.nc)  # subscribed on the server before anyone is told the service is up
        return self

    def spawn(self, answer: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `answer` as a task that `stop` waits for; the task must answer its own errors."""
        task = asyncio.create_task(answer)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def detached(self, serve: Serve) -> Handler:
        """A handler that runs `serve(request)` as a spawned task and returns at once."""

        async def handle(request: Request) -> None:
            self.spawn(serve(request))

        return handle

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop receiving, then give the answers in progress `grace_s` to finish."""
        if self.service is not None:
            await end_service(self.service, self.nc, self.config.name)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_s)


async def gather_stats(nc: NatsClient, service: str, wait_s: float, straggler_s: float = 0.03) -> list[dict[str, Any]]:
    """Every instance's `$SRV.STATS.<service>` reply (decoded) that arrives within `wait_s`. A plain
    request would keep only the first instance's; this listens on an inbox instead."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    docs: list[dict[str, Any]] = []
    try:
        await nc.publish(f"$SRV.STATS.{service}", b"", reply=inbox)
        deadline = asyncio.get_running_loop().time() + wait_s
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except Exception:  # noqa: BLE001 - nats TimeoutError: no more replies
                break
            if not msg.data:  # the server's no-responders status: nobody is listening
                break
            # instances answer within a few ms of each other: after a reply, wait only a little longer
            deadline = min(deadline, asyncio.get_running_loop().time() + straggler_s)
            try:
                doc = json.loads(msg.data)
            except ValueError:
                continue
            if isinstance(doc, dict):
                docs.append(doc)
    finally:
        await sub.unsubscribe()
    return docs


def endpoint_data(doc: dict[str, Any]) -> dict[str, Any]:
    """The first endpoint's `data` of a `$SRV.STATS` reply (the worker's stats handler fills each alike)."""
    endpoints = doc.get("endpoints") or []
    return next((e["data"] for e in endpoints if isinstance(e.get("data"), dict)), {})


async def end_service(service: Service, nc: NatsClient, name: str) -> None:
    """Stop `service` (`name` in the log) when NATS answers a ping within UNSUBSCRIBE_WAIT_S, giving
    it SERVICE_STOP_S (its stop drains its subscriptions one after another, a flush each); otherwise
    leave them to the connection's close: with a NATS that answers nothing, every one of those
    flushes would wait out its timeout and hold up the process's stop."""
    if nc.is_closed:
        return
    try:
        await nc.flush(UNSUBSCRIBE_WAIT_S)
    except nats.errors.Error as exc:
        log.warning("%s: NATS does not answer (%r); its subscriptions end with the connection", name, exc)
        return
    try:
        await asyncio.wait_for(service.stop(), SERVICE_STOP_S)
    except (TimeoutError, nats.errors.Error) as exc:
        log.warning("%s: NATS did not confirm the end of the service (%r); stopping anyway", name, exc)
