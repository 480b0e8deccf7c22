"""The bundles' HTTP side: OPA's bundle service (`BundleServer`) and its management API (`BundleApi`).

`GET /bundles/{name}` follows OPA's bundle service API (checked against opa v1.22.3's downloader):
the agent sends `If-None-Match` with its current ETag (and up to a few superseded ones,
comma-separated) and `Prefer: modes=snapshot,delta;wait=N` when long polling is configured. We answer
304 when nothing changed, holding the request up to N seconds and answering 200 the moment a new
revision is activated. A 200 must carry `Content-Type: application/vnd.openpolicyagent.bundles`, or
the agent falls back to periodic polling. A held request also ends when its client goes away (an
agent that stops or restarts): nobody is left to answer, and a server shutting down waits for every
request in flight.

`/api/v1/bundles...` is the management side: active revisions, history and publishing. Handlers
receive what they use by name from the app's dependencies (`controlplane.app`): `revisions`,
`settings`, `publish_library`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from litestar import Controller, Request, Response
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery

from bridge.kernel.config import Settings
from bridge.kernel.untrusted import header_number
from controlplane.auth.guards import requires
from controlplane.bundles.revisions import TARGETS, Revision, RevisionStore
from controlplane.routes import get, post

BUNDLE_MEDIA_TYPE = "application/vnd.openpolicyagent.bundles"
_WAIT = re.compile(r"(?:^|[;,\s])wait=(\d+)")


@runtime_checkable  # Litestar checks each dependency it injects against the parameter's type
class LibraryPublisher(Protocol):
    """Compiles the definitions in `bundles/` and activates the changed ones (off the loop); what it
    publishes also holds the stored policies, which live a layer above this package
    (`Services.publish_definitions`)."""

    async def __call__(self, force: bool = False) -> list[str]: ...


def parse_wait(prefer: str | None) -> int | None:
    """Seconds from `Prefer: ...;wait=N`, or None when the client does not long-poll."""
    if not prefer:
        return None
    m = _WAIT.search(prefer)
    return header_number("Prefer: wait", m.group(1)) if m else None


def parse_if_none_match(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip() for tag in header.split(",") if tag.strip()}


async def _client_gone(request: Request) -> None:
    """Returns once the client has disconnected (ASGI's `http.disconnect`)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _long_poll(request: Request, store: RevisionStore, name: str, target: str, known: Iterable[str],
                     timeout: float) -> bool:
    """`store.wait_for_change`, given up early when the client disconnects (then False)."""
    change = asyncio.create_task(store.wait_for_change(name, target, known, timeout))
    gone = asyncio.create_task(_client_gone(request))
    try:
        await asyncio.wait((change, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (change, gone):
            task.cancel()
    return change.done() and not change.cancelled() and change.result()


def _bundle_response(meta: Revision, archive: bytes) -> Response[bytes]:
    return Response(
        content=archive,
        media_type=BUNDLE_MEDIA_TYPE,
        headers={"ETag": meta.etag, "X-Groqpolicy-Revision": meta.revision, "Cache-Control": "no-cache"},
    )


class BundleServer(Controller):
    path = "/bundles"
    tags = ["bundles"]
    guards = [requires("agent")]

    @get("/{name:str}", summary="OPA bundle download (ETag, long polling)")
    async def download(self, request: Request, revisions: NamedDependency[RevisionStore],
                       settings: NamedDependency[Settings], name: FromPath[str],
                       target: FromQuery[str] = "rego") -> Response[bytes]:
        if target not in TARGETS:
            raise NotFoundException(f"target {target!r}: unknown (expected one of {', '.join(TARGETS)})")
        known = parse_if_none_match(request.headers.get("if-none-match"))
        wait = parse_wait(request.headers.get("prefer"))
        active = revisions.get(name, target)
        unchanged = active is None or "*" in known or active[0].etag in known
        if unchanged and wait:
            timeout = min(wait, settings.long_poll_max_s)
            if await _long_poll(request, revisions, name, target, known, timeout):
                active = revisions.get(name, target)
                unchanged = active is None
        if active is None:
            raise NotFoundException(f"bundle {name!r}: no active revision")
        meta, archive = active
        if unchanged or meta.etag in known:
            return Response(content=b"", status_code=304, headers={"ETag": meta.etag})
        return _bundle_response(meta, archive)


class BundleApi(Controller):
    path = "/api/v1"
    tags = ["bundles"]

    @get("/bundles", summary="Active bundle revisions", guards=[requires("admin")])
    async def list_bundles(self, revisions: NamedDependency[RevisionStore]) -> list[Revision]:
        return revisions.bundles()

    @get("/bundles/{name:str}/revisions", summary="Recent revisions of one bundle", guards=[requires("admin")])
    async def revisions(self, revisions: NamedDependency[RevisionStore], name: FromPath[str]) -> list[Revision]:
        history = revisions.history(name)
        if not history:
            raise NotFoundException(f"bundle {name!r}: unknown")
        return history

    @post("/bundles/publish", summary="Recompile bundles/ definitions and activate changed ones", status_code=200,
          guards=[requires("admin")])
    async def publish(self, revisions: NamedDependency[RevisionStore], publish_library: NamedDependency[LibraryPublisher],
                      force: FromQuery[bool] = False) -> dict[str, Any]:
        published = await publish_library(force=force)
        return {"published": published, "bundles": revisions.bundles()}
