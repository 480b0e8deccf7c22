"""`POST /api/v1/impact` (impact analysis) and `/api/v1/shadows` (shadow mode), admin only: both
read recorded inputs, which no other scope may see.

`POST /api/v1/impact` answers the report as JSON; with `Accept: application/x-ndjson` it streams
`{"progress": {"done", "total"}}` lines while it replays (`via=batch`: with the pass, and
`{"batch": {"id", "status", "done", "failed", "total", "elapsed_s"}}` lines while a Batch API job
runs) and ends with `{"report": ...}` (what the CLI's progress bar reads). Every check that can fail on the client's side runs before the stream
starts, so those are plain 4xx answers either way.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
from litestar import Controller, Request, Response
from litestar.di import NamedDependency
from litestar.params import Body, FromPath, JSONBody, QueryParameter
from litestar.response import Stream

from bridge.kernel.errors import GroqPolicyError, error_document
from controlplane.auth.guards import principal_of, requires
from controlplane.impact.candidate import CandidateSpec
from controlplane.impact.records import Divergence
from controlplane.impact.report import Report
from controlplane.impact.service import ImpactRequest, ImpactService, Prepared
from controlplane.impact.shadow import ShadowMode, ShadowSummary
from controlplane.impact.store import ReplayStore
from controlplane.routes import error_responses, get, post

NDJSON = "application/x-ndjson"


class ShadowRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    candidate: CandidateSpec
    sample: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None  # default 0.1


class PromoteRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    force: bool = False  # promote above the divergence threshold (recorded)


def _who(request: Request) -> str:
    token = principal_of(request)
    return token.name if token is not None else ""


class ImpactApi(Controller):
    path = "/api/v1"
    tags = ["impact"]
    guards = [requires("admin")]

    @post("/impact", status_code=200, summary="Replay recorded decisions through a candidate: what would change",
          responses=error_responses(400, 401, 403, 404, 409, 422, 429, 503))
    async def impact(self, request: Request, data: JSONBody[ImpactRequest],
                     impact: NamedDependency[ImpactService]) -> Response[Report] | Stream:
        prepared = await impact.prepare(data)
        who = _who(request)
        if NDJSON not in request.headers.get("accept", ""):
            return Response(await impact.execute(prepared, who=who))
        return Stream(_progress_lines(impact, prepared, who), media_type=NDJSON)

    @get("/impact/reports", summary="The latest impact reports of this replica, newest first",
         responses=error_responses(401, 403, 429))
    async def reports(self, impact: NamedDependency[ImpactService]) -> list[Report]:
        return list(reversed(impact.reports))

    @post("/shadows", status_code=201, summary="Evaluate a candidate beside a live policy on sampled live traffic",
          responses=error_responses(400, 401, 403, 404, 409, 422, 429, 503))
    async def begin(self, request: Request, data: JSONBody[ShadowRequest], shadows: NamedDependency[ShadowMode]) -> ShadowSummary:
        return await shadows.begin(data.candidate, data.sample, who=_who(request))

    @get("/shadows", summary="Active shadows with their divergence rates and latest divergences",
         responses=error_responses(401, 403, 429))
    async def list_shadows(self, shadows: NamedDependency[ShadowMode]) -> list[ShadowSummary]:
        return shadows.summaries()

    @get("/shadows/unrestored", summary="Saved shadows this replica could not restore at start, with the reason "
         "(discard one to remove it)", responses=error_responses(401, 403, 429))
    async def unrestored_shadows(self, shadows: NamedDependency[ShadowMode]) -> dict[str, str]:
        return dict(shadows.unrestored)

    @get("/shadows/{rule_id:uuid}/divergences", summary="Every divergence a shadow of this policy found, from the "
         "replay store (oldest first)", responses=error_responses(400, 401, 403, 409, 429, 503))
    async def divergences(self, rule_id: FromPath[uuid.UUID], replay: NamedDependency[ReplayStore],
                          since_s: Annotated[float | None, QueryParameter(gt=0)] = None) -> list[Divergence]:
        replay.check_enabled()
        return await replay.divergences(str(rule_id), time.time() - since_s if since_s else None)

    @post("/shadows/{rule_id:uuid}/promote", status_code=200, summary="Apply the shadow's candidate (refused above "
          "the divergence threshold unless forced)", responses=error_responses(400, 401, 403, 404, 409, 422, 429, 503))
    async def promote(self, request: Request, rule_id: FromPath[uuid.UUID], shadows: NamedDependency[ShadowMode],
                      data: Annotated[PromoteRequest | None, Body()] = None) -> dict:
        return await shadows.promote(rule_id, force=data.force if data else False, who=_who(request))

    @post("/shadows/{rule_id:uuid}/discard", status_code=200, summary="Drop the shadow (also one that could not be "
          "restored)",
          responses=error_responses(401, 403, 404, 429, 503))
    async def discard(self, request: Request, rule_id: FromPath[uuid.UUID], shadows: NamedDependency[ShadowMode]) -> dict:
        return await shadows.discard(rule_id, who=_who(request))


async def _progress_lines(impact: ImpactService, prepared: Prepared, who: str) -> AsyncIterator[bytes]:
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def progress(item: dict) -> None:
        await lines.put(msgspec.json.encode(item) + b"\n")

    async def run() -> None:
        try:
            found = await impact.execute(prepared, progress, who=who)
            await lines.put(msgspec.json.encode({"report": found}) + b"\n")
        except GroqPolicyError as exc:  # the stream has started: the error is its last line
            await lines.put(msgspec.json.encode(error_document(exc)) + b"\n")
        finally:
            await lines.put(None)

    task = asyncio.create_task(run())
    await lines.put(msgspec.json.encode({"progress": {"done": 0, "total": len(prepared.decisions)}}) + b"\n")
    try:
        while (line := await lines.get()) is not None:
            yield line
    finally:
        await task
