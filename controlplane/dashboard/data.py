"""What the dashboard shows, read from where the control plane already keeps it.

- policies: the example library in `rego/policies/*/policy.rego` (type and tier from each module's
  METADATA `custom`, shipped in the `groqpolicy` bundle) and the policies stored through the API;
- agents: the latest OPA status report per agent (the status store);
- decisions over time, latency per tier, recent records and their chain links: the tail of the
  audit trail in JetStream, read through the trail's reader (so every replica shows the same
  numbers, and they survive a restart);
- cache hit rate and emulation: the inference workers' `$SRV.STATS` replies over NATS.

The handlers receive each of these from the app's dependencies and hand them over as `Sources`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import yaml
from nats.aio.client import Client

from bridge.inference.catalog import default_catalog
from bridge.inference.micro import endpoint_data, gather_stats
from bridge.inference.wire import WORKER_SERVICE
from bridge.kernel.config import Settings
from bridge.kernel.vocabulary import TIERS
from bridge.opabundle.archive import BundleArchiveError, read_bundle
from controlplane.agents.status import StatusStore
from controlplane.audit.reader import TrailReader
from controlplane.audit.records import GENESIS_HASH, AuditRecord, check_stored, record_time
from controlplane.bundles.revisions import RevisionStore
from controlplane.certification.certificate import PolicyCertificate
from controlplane.dashboard.charts import OUTCOMES, Bucket, TierLatency, percentile
from controlplane.evaluation.runtime import ModelClient
from controlplane.infra.nats import NatsConnection
from controlplane.policies.bundler import LIBRARY_CERTIFICATES
from controlplane.policies.service import PolicyService

log = logging.getLogger(__name__)

WINDOW_RECORDS = 2000  # audit records read per page view (the newest ones)
RECENT_ROWS = 25
STATS_WAIT_S = 0.25  # the longest a page view waits for workers' $SRV.STATS replies
STATS_STRAGGLER_S = 0.03
# (window, bucket) pairs; the smallest window that holds the oldest record read is used
WINDOWS: tuple[tuple[int, int], ...] = ((60, 2), (300, 10), (900, 30), (3600, 60), (6 * 3600, 600), (24 * 3600, 1800))


@dataclass(frozen=True)
class Sources:
    """What a page view reads, as the app's dependencies hand it to the handler."""

    settings: Settings
    revisions: RevisionStore
    statuses: StatusStore
    policies: PolicyService
    audit_reader: TrailReader | None  # None while the audit trail is not started
    nats: NatsConnection
    model_client: ModelClient
    startup_errors: list[str]  # start-up publishing
    errors: list[str]  # everything that did not load or publish (/health's list)


@dataclass
class PolicyRow:
    name: str
    policy_type: str
    tier: str
    version: str
    status: str  # compiled | failed | pending | not compiled yet
    origin: str  # "library" (rego/policies) or "stored" (API)
    active: bool = True
    detail: str = ""
    uses_model: bool = False
    certificate: str = ""  # what certified it (controlplane.certification), in a few words
    certificate_title: str = ""  # every check and finding, for the cell's tooltip


@dataclass
class AuditRow:
    seq: int
    record: AuditRecord | None
    chain: str  # "ok", "start" (first record read, its predecessor not read) or the reason it is broken
    when: float = 0.0


@dataclass
class WorkerRow:
    id: str
    version: str
    emulated: bool
    stats: dict[str, Any]
    requests: int


@dataclass
class Snapshot:
    generated_at: float
    policies: list[PolicyRow] = field(default_factory=list)
    library_revision: str = ""
    agents: list[Any] = field(default_factory=list)
    audit_error: str = ""
    audit_total: int = 0
    window_records: int = 0
    chain_broken: int = 0
    recent: list[AuditRow] = field(default_factory=list)
    buckets: list[Bucket] = field(default_factory=list)
    bucket_s: int = 10
    window_s: int = 300
    outcome_totals: dict[str, int] = field(default_factory=dict)
    latency: list[TierLatency] = field(default_factory=list)
    workers: list[WorkerRow] = field(default_factory=list)
    workers_error: str = ""
    errors: list[str] = field(default_factory=list)
    client_hits: int = 0  # answered by this control plane's own copy (the in-process InferClient), before NATS

    @property
    def emulated(self) -> bool | None:
        """True/False when workers answered, None when none did."""
        return any(w.emulated for w in self.workers) if self.workers else None

    @property
    def cache(self) -> dict[str, int]:
        c = {"l0_hits": self.client_hits, "l1_hits": 0, "l2_hits": 0, "lookups": self.client_hits,
             "model_calls": 0, "coalesced": 0}
        for w in self.workers:
            s = w.stats
            c["l1_hits"] += int(s.get("l1_hits", 0))
            c["l2_hits"] += int(s.get("l2_hits", 0))
            c["lookups"] += int(s.get("l1_hits", 0)) + int(s.get("l1_misses", 0))
            c["model_calls"] += int(s.get("model_calls", 0))
            c["coalesced"] += int(s.get("coalesced", 0))
        c["hits"] = c["l0_hits"] + c["l1_hits"] + c["l2_hits"]
        c["misses"] = max(0, c["lookups"] - c["hits"])
        return c

    @property
    def cache_hit_rate(self) -> float | None:
        c = self.cache
        return c["hits"] / c["lookups"] if c["lookups"] else None


# ---- policies ---------------------------------------------------------------------------------
def _metadata_blocks(text: str) -> list[dict]:
    """The YAML of every `# METADATA` comment block of a Rego module."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "# METADATA":
            body = []
            i += 1
            while i < len(lines) and lines[i].lstrip().startswith("#"):
                body.append(lines[i].lstrip()[2:] if lines[i].lstrip().startswith("# ") else lines[i].lstrip()[1:])
                i += 1
            try:
                doc = yaml.safe_load("\n".join(body))
            except yaml.YAMLError:
                doc = None
            if isinstance(doc, dict):
                blocks.append(doc)
        else:
            i += 1
    return blocks


def library_policies(rego_root: Path) -> list[tuple[str, str, str, bool, str]]:
    """(title, policy_type, tier, uses_model, file) of each example policy in `rego/policies`."""
    out = []
    for path in sorted((rego_root / "rego" / "policies").glob("*/policy.rego")):
        blocks = _metadata_blocks(path.read_text())
        title = next((b["title"] for b in blocks if isinstance(b.get("title"), str)), path.parent.name)
        custom: dict[str, Any] = next(
            (b["custom"] for b in blocks if isinstance(b.get("custom"), dict) and "policy_type" in b["custom"]), {})
        out.append((title, str(custom.get("policy_type", path.parent.name)), str(custom.get("performance_tier", "")),
                    bool(custom.get("uses_model", False)), str(path.relative_to(rego_root))))
    return out


# the last active bundle's library certificates, by its ETag: a page view does not unpack it again
_shipped: dict[str, dict[str, PolicyCertificate]] = {}


def shipped_library_certificates(etag: str, archive: bytes) -> dict[str, PolicyCertificate]:
    """{policy type: certificate} of the library policies as the active bundle ships them to agents
    (its `.manifest` metadata); empty for a bundle built without them or one that does not read."""
    if etag in _shipped:
        return _shipped[etag]
    found: dict[str, PolicyCertificate] = {}
    try:
        manifest = msgspec.json.decode(read_bundle(archive).get("/.manifest", b"{}"))
        raw = (manifest.get("metadata") or {}).get(LIBRARY_CERTIFICATES) or {}
        found = {str(k): msgspec.convert(v, PolicyCertificate) for k, v in raw.items()}
    except (BundleArchiveError, msgspec.DecodeError, msgspec.ValidationError, AttributeError, TypeError) as exc:
        log.warning("dashboard: the active bundle's library certificates do not read (%s)", exc)
    _shipped.clear()
    _shipped[etag] = found
    return found


def policy_rows(sources: Sources) -> tuple[list[PolicyRow], str]:
    active = sources.revisions.get("groqpolicy", "rego")
    revision = active[0].revision if active else ""
    certificates = shipped_library_certificates(active[0].etag, active[1]) if active else {}
    failed = [e for e in sources.startup_errors if e]
    rows = []
    for title, ptype, tier, uses_model, file in library_policies(sources.settings.rego_root):
        status = "compiled" if revision else ("failed" if failed else "not compiled yet")
        cert = certificates.get(Path(file).parent.name)  # certified per library directory
        summary, why = certificate_summary(cert) if cert is not None else ("", "")
        rows.append(PolicyRow(name=title, policy_type=ptype, tier=tier or "—", version=revision or "—", status=status,
                              origin="library", detail=file, uses_model=uses_model, certificate=summary,
                              certificate_title=why))
    try:
        stored = sources.policies.list()
    except Exception:  # noqa: BLE001 - the policy store needs NATS; the panel says so
        stored = []
    for r in stored:
        status = {"success": "compiled"}.get(r.wasm_compilation_status, r.wasm_compilation_status)
        summary, title = certificate_summary(r.certificate)
        rows.append(PolicyRow(name=r.name, policy_type=r.policy_type, tier=r.performance_tier, version=f"v{r.version}",
                              status=status, origin="stored", active=r.is_active, detail=str(r.rule_id),
                              uses_model=r.groq_model_config is not None, certificate=summary, certificate_title=title))
    return rows, revision


def certificate_summary(cert: PolicyCertificate | None) -> tuple[str, str]:
    """(a few words, the whole story) of what certified a stored policy."""
    if cert is None:
        return "none", "stored before policies were certified"
    words = ["certified" if cert.certified else "not certified", f"{sum(c.passed for c in cert.checks)}/{len(cert.checks)} checks"]
    if cert.review is not None:
        words.append(f"review {cert.review.decision} ({cert.review.tier})")
    if cert.override is not None:
        words.append(f"overridden by {cert.override.by}")
    title = [f"{c.name}: {'pass' if c.passed else 'fail'}" for c in cert.checks]
    if cert.review is not None:
        title += [f"review ({cert.review.model}): {f}" for f in cert.review.findings]
    if cert.override is not None:
        title.append(f"override: {cert.override.reason}")
    title.append(f"signed by {cert.signature.kid if cert.signature else '(unsigned)'}")
    return " · ".join(words), "; ".join(title)


# ---- audit tail -------------------------------------------------------------------------------
async def read_tail(reader: TrailReader, limit: int) -> tuple[int, list[AuditRow]]:
    """The newest `limit` records with each one's chain status, and the stream's record count.

    Reads raw stored bytes (the stream's own scanner) so the hash check covers exactly what is
    stored; a record links to the one read before it, the first one read is only hash-checked.
    """
    await reader.before_read()  # this replica's spooled records first
    store = reader.store
    state = await store.state()
    if not state.messages:
        return 0, []
    start = max(state.first_seq, state.last_seq - limit + 1, 1)
    prev: str | None = GENESIS_HASH if start <= 1 else None
    rows: list[AuditRow] = []
    async for seq, _subject, data in store.scan(start, store.every_subject):
        if seq > state.last_seq:
            break
        h, record, reason = check_stored(data, prev)
        chain = reason or ("ok" if prev is not None else "start")
        rows.append(AuditRow(seq=seq, record=record, chain=chain, when=record_time(record) if record else 0.0))
        prev = h
    return state.messages, rows


def _outcome(decision: str) -> str:
    return decision if decision in OUTCOMES else "other"


def decisions_over_time(rows: list[AuditRow], now: float) -> tuple[list[Bucket], int, int]:
    times = [r.when for r in rows if r.record is not None and r.when and r.record.source != "certification"]
    oldest = min(times, default=now)
    window, step = WINDOWS[-1]
    for w, s in WINDOWS:
        if now - oldest <= w:
            window, step = w, s
            break
    end = (int(now) // step + 1) * step
    first = end - window
    buckets = [Bucket(start=float(t)) for t in range(first, end, step)]
    for r in rows:
        if r.record is None or not r.when or r.when < first or r.record.source == "certification":
            continue  # a policy's certification is on the trail, but it is not a decision
        b = buckets[min(len(buckets) - 1, int((r.when - first) // step))]
        for e in r.record.evaluations or (r.record,):  # a batch record counts each of its evaluations
            o = _outcome(e.decision)
            b.counts[o] = b.counts.get(o, 0) + 1
    return buckets, window, step


def latency_per_tier(rows: list[AuditRow]) -> list[TierLatency]:
    catalog = default_catalog()
    by_tier: dict[str, list[float]] = {t: [] for t in TIERS}
    for r in rows:
        rec = r.record
        if rec is not None and rec.performance_tier in by_tier:
            by_tier[rec.performance_tier].extend(e.latency_ms for e in rec.evaluations or (rec,) if e.latency_ms is not None)
    out = []
    for tier in TIERS:
        values = sorted(by_tier[tier])
        target = catalog.tier(tier).latency_target_ms
        row = TierLatency(tier=tier, target_ms=target, count=len(values))
        if values:
            row.p50, row.p90, row.p99 = (percentile(values, q) for q in (50, 90, 99))
            row.met = sum(1 for v in values if v <= target)
        out.append(row)
    return out


# ---- workers ----------------------------------------------------------------------------------
async def worker_stats(nc: Client, wait_s: float = STATS_WAIT_S) -> list[WorkerRow]:
    """Every inference worker's `$SRV.STATS` reply that arrives within `wait_s`."""
    rows: list[WorkerRow] = []
    for doc in await gather_stats(nc, WORKER_SERVICE, wait_s, STATS_STRAGGLER_S):
        data = endpoint_data(doc)
        rows.append(WorkerRow(id=str(doc.get("id", "")), version=str(doc.get("version", "")),
                              emulated=bool(data.get("emulated")), stats=data,
                              requests=sum(int(e.get("num_requests", 0)) for e in doc.get("endpoints") or [])))
    return sorted(rows, key=lambda w: w.id)


# ---- everything ---------------------------------------------------------------------------------
async def snapshot(sources: Sources) -> Snapshot:
    now = time.time()
    snap = Snapshot(generated_at=now)
    snap.errors = list(sources.errors)
    snap.policies, snap.library_revision = policy_rows(sources)
    snap.agents = sources.statuses.agents()
    infer = sources.model_client.client
    snap.client_hits = int(infer.counts.get("cache_hits", 0)) if infer is not None else 0

    async def audit() -> None:
        reader = sources.audit_reader
        if reader is None:
            snap.audit_error = "audit trail: not connected to NATS JetStream"
            return
        try:
            snap.audit_total, rows = await read_tail(reader, WINDOW_RECORDS)
        except Exception as exc:  # noqa: BLE001 - a panel that cannot load says why; the page still renders
            snap.audit_error = f"audit trail: {exc}"
            return
        snap.window_records = len(rows)
        snap.chain_broken = sum(1 for r in rows if r.chain not in ("ok", "start"))
        snap.recent = list(reversed(rows[-RECENT_ROWS:]))
        snap.buckets, snap.window_s, snap.bucket_s = decisions_over_time(rows, now)
        for r in rows:
            if r.record is not None:
                o = _outcome(r.record.decision)
                snap.outcome_totals[o] = snap.outcome_totals.get(o, 0) + 1
        snap.latency = latency_per_tier(rows)

    async def workers() -> None:
        nc = sources.nats.nc
        if nc is None or not nc.is_connected:
            snap.workers_error = "NATS: the control plane is not connected"
            return
        try:
            snap.workers = await worker_stats(nc)
        except Exception as exc:  # noqa: BLE001 - a panel that cannot load says why; the page still renders
            snap.workers_error = f"NATS: {exc}"

    await asyncio.gather(audit(), workers())
    if not snap.latency:
        snap.latency = latency_per_tier([])
    if not snap.buckets:
        snap.buckets, snap.window_s, snap.bucket_s = decisions_over_time([], now)
    return snap
