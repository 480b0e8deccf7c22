"""`groqpolicy evaluate --file contexts.jsonl --via batch`: the file as one evaluation job whose
judgments go through GroqCloud's Batch API at its batch price (`POST /api/v1/evaluate/jobs`).

The job is polled (`GET /api/v1/evaluate/jobs/{id}`) and its progress shown on stderr: the pass,
its contexts decided, and the Batch API job's status and counts between passes. Once completed,
the results (NDJSON, one per context in the file's order) go to --output, and a summary is printed.
Ctrl-C cancels the job, and its running Batch API job with it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.ops import commands
from controlplane.ops.client import ClientError, ControlPlaneClient

JOBS = "/api/v1/evaluate/jobs"
POLL_S, MAX_POLL_S = 0.2, 5.0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`evaluate`: --via batch needs --file and runs it as a job; http and nats as before."""
    if args.via != "batch":
        return commands.cmd_evaluate(args)
    if not args.file:
        raise ClientError("--via batch evaluates a file", "pass --file contexts.jsonl (one context object per line)")
    contexts = commands._load_contexts(Path(args.file))
    body = {"contexts": contexts, "policy_types": [t for t in (args.types or "").split(",") if t],
            "performance_tier": args.tier, "constitutional_hash": CONSTITUTIONAL_HASH, "via": "batch"}
    started = time.perf_counter()
    with commands._client(args) as api:
        job = api.post(JOBS, body)
        sys.stderr.write(f"job {job['id']}: {job['contexts']:,} contexts, judgments via the Batch API\n")
        try:
            job = _wait(api, job["id"])
        except KeyboardInterrupt:
            api.post(f"{JOBS}/{job['id']}/cancel")
            sys.stderr.write(f"\njob {job['id']}: cancelled\n")
            return 130
        sys.stderr.write("\n")
        if job["state"] != "completed":
            raise ClientError(f"job {job['id']}: {job['state']}: {job.get('error') or 'no reason given'}",
                              "see GET /api/v1/evaluate/jobs/{id}; re-run the file to start a new job")
        text = _results(api, job["id"])
    if args.output:
        Path(args.output).write_text(text)
    _summary(job, time.perf_counter() - started, args.output)
    return 0


def _wait(api: ControlPlaneClient, job_id: str) -> dict[str, Any]:
    wait, shown = POLL_S, ""
    while True:
        job: dict[str, Any] = api.get(f"{JOBS}/{job_id}")
        line = progress_line(job)
        if line != shown:
            sys.stderr.write(f"\r{line:<100}")
            sys.stderr.flush()
            shown, wait = line, POLL_S
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(wait)
        wait = min(wait * 1.5, MAX_POLL_S)


def progress_line(job: dict[str, Any]) -> str:
    """One status line: the state, the pass and its contexts, the Batch API job between passes."""
    if job["state"] == "queued":
        return "queued behind another job"
    line = f"pass {job['passes'] or 1}: {job['done']:,}/{job['contexts']:,} contexts"
    b = job.get("batch")  # the running Batch API job, or the last one
    if b:
        line += f" | batch {b['id']}: {b['status']} {b['done'] + b['failed']:,}/{b['total'] or '?'} judgments ({b['failed']} failed)"
    return line


def _results(api: ControlPlaneClient, job_id: str) -> str:
    resp = api.http.get(f"{JOBS}/{job_id}/results")
    if resp.status_code != 200:
        api.raise_for(resp, "GET", f"{JOBS}/{job_id}/results")
    return resp.text


def _summary(job: dict[str, Any], elapsed_s: float, output: str | None) -> None:
    decisions = job.get("decisions") or {}
    counts = ", ".join(f"{k} {decisions.get(k, 0)}" for k in ("allow", "deny", "review"))
    j = job["judgments"]
    print(f"{job['contexts']:,} contexts in {elapsed_s:.2f} s ({job['passes']} passes): {counts}")
    print(f"judgments: {j['asked']:,} asked through the Batch API ({j['failed']} failed: review), "
          f"estimated ${j['cost_usd']:.6f} at the batch price")
    print(f"batch jobs: {', '.join(job['batches']) or 'none (no judgment needed)'}")
    if output:
        print(f"results: {output} (job {job['id']})")
