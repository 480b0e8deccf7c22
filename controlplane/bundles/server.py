"""OPA's bundle service API: `GET /bundles/{name}` with ETags and long polling.

Protocol (checked against opa v1.22.3's downloader): the agent sends `If-None-Match` with its
current ETag (and up to a few superseded ones, comma-separated) and `Prefer: modes=snapshot,delta;wait=N`
when long polling is configured. We answer 304 when nothing changed, holding the request up to N
seconds and answering 200 the moment a new revision is activated. A 200 must carry
`Content-Type: application/vnd.openpolicyagent.bundles`, or the agent falls back to periodic polling.
"""

from __future__ import annotations

import re

from litestar import Controller, Request, Response
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery

from controlplane.auth.guards import requires
from controlplane.bundles.revisions import TARGETS, Revision
from controlplane.routes import get
from controlplane.services import ServicesDep

BUNDLE_MEDIA_TYPE = "application/vnd.openpolicyagent.bundles"
_WAIT = re.compile(r"(?:^|[;,\s])wait=(\d+)")


def parse_wait(prefer: str | None) -> int | None:
    """Seconds from `Prefer: ...;wait=N`, or None when the client does not long-poll."""
    if not prefer:
        return None
    m = _WAIT.search(prefer)
    return int(m.group(1)) if m else None


def parse_if_none_match(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip() for tag in header.split(",") if tag.strip()}


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
    async def download(self, request: Request, services: ServicesDep, name: FromPath[str], target: FromQuery[str] = "rego") -> Response[bytes]:
        if target not in TARGETS:
            raise NotFoundException(f"target {target!r}: unknown (expected one of {', '.join(TARGETS)})")
        store = services.store
        known = parse_if_none_match(request.headers.get("if-none-match"))
        wait = parse_wait(request.headers.get("prefer"))
        active = store.get(name, target)
        unchanged = active is None or "*" in known or active[0].etag in known
        if unchanged and wait:
            timeout = min(wait, services.settings.long_poll_max_s)
            if await store.wait_for_change(name, target, known, timeout):
                active = store.get(name, target)
                unchanged = active is None
        if active is None:
            raise NotFoundException(f"bundle {name!r}: no active revision")
        meta, archive = active
        if unchanged or meta.etag in known:
            return Response(content=b"", status_code=304, headers={"ETag": meta.etag})
        return _bundle_response(meta, archive)
