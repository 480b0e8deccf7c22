"""`/api/v1/evaluate/jobs`: evaluation jobs (evaluate scope).

    POST /api/v1/evaluate/jobs                 {contexts, policy_types, performance_tier, via} -> 202 the job
    GET  /api/v1/evaluate/jobs                 the caller's jobs (an admin: the deployment's; this process's without NATS), newest first
    GET  /api/v1/evaluate/jobs/{id}            state, pass, progress, the Batch API jobs, judgments, cost
    GET  /api/v1/evaluate/jobs/{id}/results    NDJSON: one EvaluateResponse per context, in order (409 until completed)
    POST /api/v1/evaluate/jobs/{id}/cancel     the job and its running Batch API job

A job is its submitter's: another `evaluate` token gets 404 for it and does not see it listed
(it would read others' decisions, which are otherwise admin-only); an `admin` token sees all.
Any process answers for any job (they are kept in JetStream: `controlplane.evaljobs.shared`).
"""

from __future__ import annotations

from litestar import Controller, Request
from litestar.background_tasks import BackgroundTask
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.response import File

from controlplane.auth.guards import authenticate, principal_of, requires
from controlplane.evaljobs.schemas import MAX_JOB_CONTEXTS, Job, JobRequest
from controlplane.evaljobs.service import EvalJobs
from controlplane.routes import error_responses, get, post

NDJSON = "application/x-ndjson"


def viewer_of(request: Request) -> str | None:
    """Whose jobs the caller may see: its token's name, or None (every job) for an admin token."""
    token = authenticate(request)  # the guard's token (401 if somehow absent: never everyone's jobs)
    return None if "admin" in token.scopes else token.name
MAX_JOB_BODY = 64 * 1024 * 1024


class EvaluationJobs(Controller):
    path = "/api/v1/evaluate/jobs"
    tags = ["evaluation"]
    guards = [requires("evaluate")]

    @post("", status_code=202, summary=f"Start an evaluation job of up to {MAX_JOB_CONTEXTS:,} contexts",
          request_max_body_size=MAX_JOB_BODY, responses=error_responses(400, 401, 403, 413, 422, 429, 503))
    async def submit(self, request: Request, data: JSONBody[JobRequest], evaljobs: NamedDependency[EvalJobs]) -> Job:
        token = principal_of(request)
        return await evaljobs.submit(data, who=token.name if token is not None else "")

    @get("", summary="The evaluation jobs, newest first", responses=error_responses(401, 403, 429))
    async def listing(self, request: Request, evaljobs: NamedDependency[EvalJobs]) -> list[Job]:
        return await evaljobs.listing(viewer_of(request))

    @get("/{job_id:str}", summary="An evaluation job's state and progress", responses=error_responses(401, 403, 404, 429))
    async def show(self, request: Request, job_id: FromPath[str], evaljobs: NamedDependency[EvalJobs]) -> Job:
        return await evaljobs.get(job_id, viewer_of(request))

    @get("/{job_id:str}/results", summary="A completed job's results as NDJSON, one per context in order",
         responses=error_responses(401, 403, 404, 409, 429))
    async def results(self, request: Request, job_id: FromPath[str], evaljobs: NamedDependency[EvalJobs]) -> File:
        path, download = await evaljobs.results(job_id, viewer_of(request))
        return File(path, media_type=NDJSON, content_disposition_type="inline", filename=f"{job_id}.ndjson",
                    background=BackgroundTask(path.unlink, missing_ok=True) if download else None)

    @post("/{job_id:str}/cancel", status_code=200, summary="Cancel a queued or running evaluation job",
          responses=error_responses(401, 403, 404, 409, 429))
    async def cancel(self, request: Request, job_id: FromPath[str], evaljobs: NamedDependency[EvalJobs]) -> Job:
        return await evaljobs.cancel(job_id, viewer_of(request))
