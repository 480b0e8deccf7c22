"""A batch job's contexts decided in passes, with judgments answered only by the Batch API.

Each pass decides every context on an evaluator of its own (the bundle revision active when the
job started, for every pass) through `ReplayPipeline`, the pipeline as a replay runs it, whose
model calls all go to an `Oracle` holding no recorded judgment: its only way of asking is the job's
`BatchReAsk`. A judgment the batches have not answered yet is noted and answered as an unreachable
model (the policy reads it as review), and the pass's decisions are thrown away; between passes the
noted requests go out as one Batch API job per tier (`controlplane.impact.batched.in_passes`). The
pass that notes nothing new gives the results. So every answer a decision uses came from the output
file the control plane downloaded itself; the caller's contexts never carry one (they are policy
input, never looked up as answers). A line the batch failed, expired or cancelled is a degraded
`review` reply (`bridge.inference.batch`): never `allow`.

The WASM work of a pass runs on a thread with an event loop of its own, so a 10,000-context pass
never holds up the serving loop; the batches are asked from the serving loop, where the Groq
client lives.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import msgspec

from bridge.inference.batch import BatchProgress
from bridge.opabundle.keys import VerificationKey
from bridge.opawasm import HostConfig, WasmEvaluator
from controlplane.audit.evaluations import batch_audit_record
from controlplane.audit.records import AuditRecord
from controlplane.evaluation.scheduling import WASM_POOL_SIZE
from controlplane.evaluation.schemas import EvaluateResponse
from controlplane.impact.batched import BatchReAsk, in_passes
from controlplane.impact.replay import Oracle, ReplayPipeline
from controlplane.policies.schemas import PolicyRecord

CHUNK = 1024  # contexts per decide_many call (and per progress step)
AUDIT_CHUNK = 1000  # evaluations per audit record (a record is one JetStream message)


class Cancelled(Exception):
    """The job was cancelled while a pass was deciding (raised on the pass's thread)."""


class BatchEvaluation:
    def __init__(self, key: VerificationKey, archive: bytes, records: list[PolicyRecord], bridge_url: str,
                 reask: BatchReAsk) -> None:
        self.key, self.archive, self.records, self.bridge_url = key, archive, records, bridge_url
        self.reask = reask
        self.oracle: Oracle | None = None  # the last pass's: its asked/failed counts are the job's
        self.cancelled = threading.Event()

    async def run(self, contexts: list[dict[str, Any]], *, policy_types: list[str], tier: str, chash: str,
                  on_pass: Callable[[int, int], None], on_batch: Callable[[BatchProgress], None]) -> list[EvaluateResponse]:
        """The last pass's responses, in context order. `on_pass(pass, done)` from the pass's thread."""

        async def one_pass(number: int) -> list[EvaluateResponse]:
            self.oracle = Oracle({}, self.reask)  # nothing recorded: every answer is a batch's
            on_pass(number, 0)
            return await asyncio.to_thread(asyncio.run, self._decide(self.oracle, contexts, policy_types, tier, chash,
                                                                     lambda done: on_pass(number, done)))

        return await in_passes(self.reask, one_pass, on_batch)

    async def _decide(self, oracle: Oracle, contexts: list[dict[str, Any]], policy_types: list[str], tier: str,
                      chash: str, progress: Callable[[int], None]) -> list[EvaluateResponse]:
        # the batches' answers do not change within a pass, so a request answered once is answered
        # from the oracle's memo inside the evaluator after that (`HostConfig.send_memo`)
        evaluator = WasmEvaluator({self.key.kid: self.key}, keyid=self.key.kid, pool_size=WASM_POOL_SIZE,
                                  host=HostConfig(bridge_url=self.bridge_url, infer_transport=oracle.transport,
                                                  send_memo=oracle.memo))
        evaluator.load(self.archive)
        pipeline = ReplayPipeline(evaluator, lambda: self.records, ask_model=oracle.ask)
        out: list[EvaluateResponse] = []
        try:
            for at in range(0, len(contexts), CHUNK):
                if self.cancelled.is_set():
                    raise Cancelled
                out += await pipeline.decide_many(contexts[at:at + CHUNK], policy_types=policy_types, tier=tier,
                                                  constitutional_hash=chash, explain=False)
                progress(len(out))
        finally:
            await pipeline.stop()
            evaluator.close()
        return out


def audit_records(job_id: str, responses: list[EvaluateResponse], contexts: list[dict[str, Any]], *, tier: str,
                  latency_ms: float, batches: list[str]) -> list[AuditRecord]:
    """The job's decisions as batch records (one per `AUDIT_CHUNK`), each saying `via: batch`, the job
    and the Batch API jobs whose answers decided them."""
    records = []
    for at in range(0, len(responses), AUDIT_CHUNK):
        record = batch_audit_record(responses[at:at + AUDIT_CHUNK], contexts[at:at + AUDIT_CHUNK], tier=tier,
                                    batch_id=job_id, latency_ms=latency_ms)
        records.append(_with_details(record, {"via": "batch", "job_id": job_id, "batches": list(batches),
                                              "first_line": at + 1}))
    return records


def _with_details(record: AuditRecord, details: dict[str, Any]) -> AuditRecord:
    return msgspec.structs.replace(record, details={**record.details, **details})
