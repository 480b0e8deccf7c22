"""`groqpolicy judge --file requests.jsonl`: many model judgments as one GroqCloud batch job.

Each line is an inference request as the bridge takes it (`{"question", "context", "policy",
"model", "max_tokens", "strict_schema", ...}`: `bridge.inference.wire.InferRequest`). The lines go
through the Batch API (`bridge.inference.batch.BatchClient`) at the batch price, with the batch's
status and counts shown while it runs; each reply (fail closed: a line without a valid answer is
`review`, `degraded`) is written to `--output` in the input's order, and a summary is printed.

The model endpoint is the worker's: GroqCloud with `GROQ_API_KEY`, else the emulator at
`GROQPOLICY_EMULATOR_URL` (which then answers every line, and every reply says `emulated`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import msgspec

from bridge.kernel.config import GroqSettings
from bridge.kernel.errors import ConfigError, GroqPolicyError
from bridge.kernel.vocabulary import ROUTABLE_TIERS
from controlplane.ops.client import ClientError


def _load(path: Path) -> list:
    from bridge.inference.wire import InferRequest, read_request

    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ClientError(f"{path}: cannot read ({exc.strerror})", "one inference request (JSON) per line") from exc
    out: list[InferRequest] = []
    for n, raw in enumerate(lines, 1):
        if raw.strip():
            try:
                out.append(read_request(raw, label=f"{path}:{n}"))
            except GroqPolicyError as exc:
                raise ClientError(exc.message, 'e.g. {"question": "Is this harmful?", "context": {...}}') from exc
    if not out:
        raise ClientError(f"{path}: no requests", "one inference request (JSON) per line")
    return out


def _show(p: object) -> None:
    from bridge.inference.batch import BatchProgress

    assert isinstance(p, BatchProgress)
    sys.stderr.write(f"\rbatch {p.batch_id}: {p.status:<11} {p.done + p.failed}/{p.total or '?'} answered "
                     f"({p.failed} failed)  {p.elapsed_s:,.1f} s")
    sys.stderr.flush()


def cmd_judge(args: argparse.Namespace) -> int:
    import groq

    from bridge.inference.batch import BatchClient
    from bridge.inference.catalog import default_catalog
    from bridge.inference.worker import groq_endpoint

    if args.tier not in ROUTABLE_TIERS:
        raise ClientError(f"--tier {args.tier!r}: unknown", f"one of: {', '.join(ROUTABLE_TIERS)}")
    requests = _load(Path(args.file))
    try:
        endpoint = groq_endpoint(GroqSettings.from_env())
    except ConfigError as exc:
        raise ClientError(str(exc), "set GROQ_API_KEY, or GROQPOLICY_EMULATOR_URL for an emulator") from exc

    async def go() -> list:
        client = groq.AsyncGroq(api_key=endpoint.api_key, base_url=endpoint.base_url, max_retries=2)
        try:
            batch = BatchClient(client, default_catalog(), completion_window=args.completion_window,
                                poll_s=args.poll_s, emulated=endpoint.emulated)
            return await batch.submit(requests, tier=args.tier, progress=_show)
        finally:
            await client.close()

    started = time.perf_counter()
    try:
        replies = asyncio.run(go())
    finally:
        sys.stderr.write("\n")
    if args.output:
        Path(args.output).write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in replies))
    counts = {k: sum(1 for r in replies if r.decision == k) for k in ("allow", "deny", "review")}
    cost = sum(r.usage.cost_usd for r in replies)
    elapsed = time.perf_counter() - started
    print(f"{len(replies)} judgments in {elapsed:.2f} s ({len(replies) / elapsed:,.0f}/s) through the Batch API"
          f"{' (EMULATED)' if endpoint.emulated else ''}: "
          + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f"; {sum(1 for r in replies if r.degraded)} without a valid answer; batch price ${cost:.6f}")
    return 0


def add_judge(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ju = sub.add_parser("judge", help="many model judgments as one Batch API job (JSON-lines requests)")
    ju.add_argument("--file", required=True, help="one inference request per line: {\"question\", \"context\", ...}")
    ju.add_argument("--output", help="write every reply as JSON lines here (the input's order)")
    ju.add_argument("--tier", default="fast", help=f"one of {', '.join(ROUTABLE_TIERS)} (auto: routed per request)")
    ju.add_argument("--completion-window", default="24h", help="the Batch API's window: 24h to 7d")
    ju.add_argument("--poll-s", type=float, default=1.0, help="first wait between status checks (doubles to 30 s)")
    ju.set_defaults(func=cmd_judge)
