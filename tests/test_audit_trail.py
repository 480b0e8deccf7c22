"""The audit trail against a real nats-server: chain, filters, replicas racing, tampering, outages."""

from __future__ import annotations

import asyncio
import json
import time

import msgspec
import nats
import pytest
from nats.js.errors import APIError

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.audit import AuditFilters, AuditRecord, AuditTrail, AuditUnavailable
from controlplane.audit.ingest import decision_log_record
from controlplane.audit.records import (
    GENESIS_HASH,
    BatchSignature,
    EvaluationEntry,
    chain_hash,
    check_stored,
    digest,
    seal,
)
from controlplane.audit.trail import AuditQueryError
from controlplane.audit.writer import ATOMIC_FROM
from controlplane.infra.processes import start_nats
from controlplane.infra.recordkeys import RecordKeys
from tests.controlplane_helpers import counted_publishes

KEYS = RecordKeys.generate()  # the control plane's record key (replicas share one)


@pytest.fixture
async def trail(nats_server):
    nc = await nats.connect(nats_server.extra["url"])
    t = AuditTrail(nc, keys=KEYS)
    await t.ensure_stream()
    yield t
    await t.close()
    await nc.close()


def rec(decision="allow", source="api", **kw) -> AuditRecord:
    return AuditRecord(source=source, decision=decision, **kw)


async def test_appends_form_a_chain_that_verifies(trail):
    stored = [await trail.append(rec(evaluation_id=f"e{i}")) for i in range(3)]
    assert [s.seq for s in stored] == [1, 2, 3]
    assert stored[0].record.prev_hash == GENESIS_HASH
    assert stored[1].record.prev_hash == stored[0].record.hash
    assert stored[2].record.prev_hash == stored[1].record.hash
    for s in stored:
        assert s.record.constitutional_hash == CONSTITUTIONAL_HASH
        assert s.record.hash == chain_hash(msgspec.to_builtins(s.record))
        assert s.subject == "audit.api.allow"
    page = await trail.list()
    assert [r.record for r in page.records] == [s.record for s in stored]
    assert page.next_after_seq is None
    report = await trail.verify()
    assert (report.ok, report.checked, report.first_bad_seq, report.reason) == (True, 3, None, "")
    assert report.last_seq == 3 and report.last_hash == stored[-1].record.hash


async def test_empty_stream_verifies(trail):
    report = await trail.verify()
    assert (report.ok, report.checked, report.last_hash) == (True, 0, GENESIS_HASH)
    assert (await trail.list()).records == []


async def test_concurrent_appends_are_group_committed_in_order(trail):
    records = [rec(evaluation_id=f"e{i}") for i in range(300)]
    stored = await asyncio.gather(*(trail.append(r) for r in records))
    assert sorted(s.seq for s in stored) == list(range(1, 301))
    assert [s.record.record_id for s in stored] == [r.record_id for r in records]
    assert (await trail.verify()).checked == 300


async def test_a_short_queue_goes_out_one_record_per_publish_a_long_one_in_atomic_batches(trail):
    """nats-server stages an atomic batch in a file store made for it (milliseconds of its CPU), so
    fewer than ATOMIC_FROM records go out one conditioned publish each, each signed over its own
    sequence; a longer queue in batches, one signature each."""
    with counted_publishes(trail) as publishes:
        short = await trail.append_many([rec(evaluation_id=f"s{i}") for i in range(3)])
        assert publishes == [1, 1, 1]
        assert [(s.seq, s.record.signature and s.record.signature.first_seq) for s in short] == [(1, 1), (2, 2), (3, 3)]
        long = await trail.append_many([rec(evaluation_id=f"l{i}") for i in range(ATOMIC_FROM)])
        assert publishes == [1, 1, 1, ATOMIC_FROM]
    assert [s.record.signature is None for s in long] == [True] * (ATOMIC_FROM - 1) + [False]
    report = await trail.verify()
    assert (report.ok, report.checked) == (True, 3 + ATOMIC_FROM), report


@pytest.mark.parametrize("atomic_from", [1, ATOMIC_FROM], ids=["atomic-batches", "singles"])
async def test_two_replicas_racing_never_fork_the_chain(nats_server, atomic_from):
    """Two control planes (two connections, two trails) appending at once: one chain, no fork;
    their groups of five as atomic batches, or as one conditioned publish per record."""
    url = nats_server.extra["url"]
    ncs = [await nats.connect(url) for _ in range(2)]
    trails = [AuditTrail(nc, keys=KEYS) for nc in ncs]
    for t in trails:
        t.atomic_from = atomic_from
    await trails[0].ensure_stream()
    try:
        async def writer(t: AuditTrail, name: str) -> list:
            out = []
            for i in range(20):
                out += await asyncio.gather(*(t.append(rec(evaluation_id=f"{name}-{i}-{j}")) for j in range(5)))
            return out

        primed = [await trails[0].append(rec(evaluation_id="a-0")), await trails[1].append(rec(evaluation_id="b-0"))]
        # trail 0's cached tail is stale now: its next append must lose and relink
        a, b = await asyncio.gather(writer(trails[0], "a"), writer(trails[1], "b"))
        seqs = sorted(s.seq for s in primed + a + b)
        assert seqs == list(range(1, 203))  # every acknowledged record is in the stream, once
        assert trails[0].conflicts >= 1
        report = await trails[0].verify()
        assert (report.ok, report.checked) == (True, 202), report
        hashes = [s.record.prev_hash for s in (await trails[1].list(limit=1000)).records]
        assert len(set(hashes)) == 202  # no two records link to the same predecessor
    finally:
        for nc in ncs:
            await nc.close()


async def test_a_retried_record_is_stored_once(nats_server):
    """A retry after a lost ack (same record id) returns the stored record instead of a second copy."""
    url = nats_server.extra["url"]
    nc1, nc2 = await nats.connect(url), await nats.connect(url)
    t1, t2 = AuditTrail(nc1, keys=KEYS), AuditTrail(nc2, keys=KEYS)
    await t1.ensure_stream()
    try:
        r = rec(evaluation_id="once")
        first = await t1.append(r)
        await t2.append(rec(evaluation_id="other"))  # the tail moves on
        again = await t1.append(r)  # t1's cached tail is stale, and r is not the tail any more
        assert again.seq == first.seq and again.record.hash == first.record.hash
        assert (await t2.verify()).checked == 2
    finally:
        await nc1.close()
        await nc2.close()


@pytest.mark.parametrize("atomic_from, lost_seq", [(1, 3), (ATOMIC_FROM, 1)], ids=["atomic-batch", "single"])
async def test_a_lost_ack_is_settled_by_reading_the_next_sequence(nats_server, atomic_from, lost_seq):
    """The publish committed but its answer never came: the trail finds it at last+1 and adopts it.
    The three records go out as one atomic batch, or (a short queue) one publish each."""
    nc = await nats.connect(nats_server.extra["url"])
    trail = AuditTrail(nc, keys=KEYS, timeout=0.3)
    trail.atomic_from = atomic_from
    await trail.ensure_stream()
    lost: list[bytes] = []
    deliver = trail.writer.publisher._on_ack

    async def lossy(msg) -> None:
        if not lost:
            lost.append(msg.data)  # swallowed: the publisher times out without knowing
            return
        await deliver(msg)

    trail.writer.publisher._on_ack = lossy  # type: ignore[method-assign]
    try:
        stored = await asyncio.gather(*(trail.append(rec(evaluation_id=f"e{i}")) for i in range(3)))
        assert lost and f'"seq":{lost_seq}'.encode() in lost[0]  # the whole publish had committed
        assert [s.seq for s in stored] == [1, 2, 3]
        assert (await nc.jetstream().stream_info(trail.stream)).state.messages == 3  # not stored twice
        assert (await trail.verify()).checked == 3
    finally:
        await nc.close()


@pytest.mark.parametrize("atomic_from", [1, ATOMIC_FROM], ids=["atomic-batch", "singles"])
async def test_a_batch_holding_an_already_stored_record_goes_one_by_one(trail, atomic_from):
    trail.atomic_from = atomic_from
    first = await trail.append(rec(evaluation_id="first"))
    again = AuditRecord(**{f: getattr(first.record, f) for f in ("source", "decision", "record_id", "evaluation_id")})
    stored = await trail.append_many([again, rec(evaluation_id="x"), rec(evaluation_id="y")])
    assert stored[0].seq == 1 and stored[0].record.hash == first.record.hash  # the stored copy stands
    assert [s.seq for s in stored[1:]] == [2, 3]
    assert (await trail.verify()).checked == 3


async def test_verify_reports_a_record_published_with_a_wrong_prev_hash(trail):
    for i in range(3):
        await trail.append(rec(evaluation_id=f"e{i}"))
    forged, data = seal(rec(decision="allow", evaluation_id="forged"), "ab" * 32)
    await trail.nc.jetstream().publish("audit.api.allow", data)  # straight to the stream, no expected sequence
    after = await trail.append(rec(evaluation_id="after"))
    assert after.record.prev_hash == forged.hash  # the trail keeps linking from the real tail
    report = await trail.verify()
    assert report.ok is False
    assert report.first_bad_seq == 4 and report.bad == 1 and report.checked == 5
    assert report.reason == f"prev_hash: does not link to the previous record (want: {(await trail.list()).records[2].record.hash}, got: {'ab' * 32})"


async def test_verify_reports_an_edited_record(trail):
    first = await trail.append(rec(evaluation_id="e0"))
    fields = msgspec.to_builtins(first.record)
    fields["decision"] = "deny"  # edit the decision, keep the old hash and link
    fields["prev_hash"] = first.record.hash
    stated = fields["hash"]
    await trail.nc.jetstream().publish("audit.api.deny", msgspec.json.encode(fields))
    report = await trail.verify()
    assert (report.ok, report.first_bad_seq) == (False, 2)
    assert report.reason == f"hash: mismatch (stated: {stated}, computed: {chain_hash(fields)})"


async def test_verify_reports_a_record_filed_under_another_subject(trail):
    _, data = seal(rec(decision="deny", evaluation_id="x"), GENESIS_HASH)
    await trail.nc.jetstream().publish("audit.api.allow", data)
    report = await trail.verify()
    assert report.first_bad_seq == 1
    assert report.reason == "subject: audit.api.allow does not match the record (want: audit.api.deny)"


async def test_verify_reports_garbage(trail):
    await trail.append(rec())
    await trail.nc.jetstream().publish("audit.api.allow", b"not json")
    report = await trail.verify()
    assert report.first_bad_seq == 2 and report.reason.startswith("payload: invalid JSON")


async def test_stream_refuses_deletes_and_purges(trail):
    await trail.append(rec())
    js = trail.nc.jetstream()
    with pytest.raises(APIError):
        await js.delete_msg(trail.stream, 1)
    with pytest.raises(APIError):
        await js.purge_stream(trail.stream)
    assert (await trail.verify()).checked == 1


async def test_filters_and_pagination(trail):
    t0 = time.time()
    await trail.append(rec("allow", "api", policy_ids=["p1"], evaluation_id="a"))
    await trail.append(rec("deny", "batch", policy_ids=["p1", "p2"], batch_id="b1"))
    await trail.append(rec("review", "nats", policy_ids=["p2"]))
    await asyncio.sleep(0.05)
    t_mid = time.time()
    await trail.append(rec("deny", "api", policy_ids=["p3"]))
    await trail.append(rec("allow", "opa-agent", decision_id="d1", path="groqpolicy/main"))

    async def seqs(**kw) -> list[int]:
        limit = kw.pop("limit", 100)
        after = kw.pop("after_seq", 0)
        return [r.seq for r in (await trail.list(AuditFilters(**kw), limit=limit, after_seq=after)).records]

    assert await seqs() == [1, 2, 3, 4, 5]
    assert await seqs(decision="deny") == [2, 4]
    assert await seqs(source="api") == [1, 4]
    assert await seqs(source="api", decision="deny") == [4]
    assert await seqs(policy_id="p1") == [1, 2]
    assert await seqs(policy_id="p2", decision="review") == [3]
    assert await seqs(evaluation_id="a") == [1]
    assert await seqs(decision_id="d1") == [5]
    assert await seqs(since=t_mid) == [4, 5]
    assert await seqs(until=t_mid) == [1, 2, 3]
    assert await seqs(since=t0 - 10, until=t_mid) == [1, 2, 3]
    page = await trail.list(AuditFilters(), limit=2)
    assert [r.seq for r in page.records] == [1, 2] and page.next_after_seq == 2
    page = await trail.list(AuditFilters(), limit=2, after_seq=page.next_after_seq)
    assert [r.seq for r in page.records] == [3, 4] and page.next_after_seq == 4
    page = await trail.list(AuditFilters(), limit=2, after_seq=4)
    assert [r.seq for r in page.records] == [5] and page.next_after_seq is None
    with pytest.raises(AuditQueryError, match=r"^source: 'web' unknown \(expected one of api, batch, nats, opa-agent, admin, certification\)$"):
        await trail.list(AuditFilters(source="web"))
    with pytest.raises(AuditQueryError, match=r"^decision: 'maybe' unknown"):
        await trail.list(AuditFilters(decision="maybe"))


async def test_newest_first_pages_backwards_with_filters(trail):
    for i in range(40):
        await trail.append(rec("deny" if i % 3 == 0 else "allow", evaluation_id=f"e{i}"))

    async def page(**kw) -> tuple[list[int], int | None]:
        limit, before = kw.pop("limit", 100), kw.pop("before_seq", None)
        p = await trail.list_newest(AuditFilters(**kw), limit=limit, before_seq=before)
        return [r.seq for r in p.records], p.next_before_seq

    assert await page(limit=3) == ([40, 39, 38], 38)
    assert await page(limit=3, before_seq=38) == ([37, 36, 35], 35)
    assert await page(limit=3, before_seq=3) == ([2, 1], None)
    denies = [s for s in range(40, 0, -1) if (s - 1) % 3 == 0]
    assert await page(decision="deny", limit=100) == (denies, None)
    assert await page(decision="deny", limit=2) == (denies[:2], denies[1])
    assert await page(evaluation_id="e0") == ([1], None)
    assert (await trail.list_newest(AuditFilters(), limit=5)).next_after_seq is None


async def test_append_fails_closed_when_jetstream_is_gone(tmp_path):
    server = start_nats(tmp_path / "nats")
    nc = await nats.connect(server.extra["url"], max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    trail = AuditTrail(nc, keys=KEYS, timeout=0.5, append_deadline=2.0)
    try:
        await trail.ensure_stream()
        await trail.append(rec())
        server.kill()
        started = time.monotonic()
        with pytest.raises(AuditUnavailable, match=r"^audit trail: 1 record\(s\) not acknowledged within 2s"):
            await trail.append(rec())
        assert time.monotonic() - started < 5
    finally:
        server.stop()
        try:
            await nc.close()
        except ConnectionError:  # nats-py closing mid-reconnect
            pass


async def test_unknown_source_is_refused(trail):
    with pytest.raises(Exception, match="source 'web' unknown"):
        await trail.append(AuditRecord(source="web", decision="allow"))  # type: ignore[arg-type]


def test_check_stored_names_what_is_wrong():
    r, data = seal(rec(), GENESIS_HASH)
    assert check_stored(data, GENESIS_HASH) == (r.hash, r, "")
    fields = json.loads(data)
    fields["constitutional_hash"] = "0000000000000000"
    fields["hash"] = chain_hash(fields)
    _, _, reason = check_stored(json.dumps(fields).encode(), GENESIS_HASH)
    assert reason == f"constitutional_hash: want {CONSTITUTIONAL_HASH}, got 0000000000000000"
    assert check_stored(b"[1]", None)[2] == "payload: expected a JSON object, got list"


@pytest.mark.parametrize("signed", [False, True])
def test_sealed_bytes_are_the_records_canonical_json(signed):
    """`seal` encodes from the record's fields (a batch's entries once): the bytes are exactly the
    generic form `verify` rehashes: every field, keys sorted at every level, `signature` only when
    signed; a nested "hash" key or an empty batch is not special."""
    entries = [EvaluationEntry(evaluation_id=f"e{i}", decision=("allow", "deny")[i % 2], policy_ids=["p-1"],
                               confidence_score=0.1 * i, reasons=["größer als 10", 'a "quoted" reason'],
                               input_sha256="ab" * 32, latency_ms=1e-7 * i) for i in range(3)]
    for record in (rec(details={"z": {"hash": "", "signature": None}, "a": [1.5, "x"]}, latency_ms=0.25),
                   rec(source="batch", batch_id="b-1", evaluations=entries, bundle_revisions={"z": "2", "a": "1"})):
        sign = (lambda h: BatchSignature(kid="k1", first_seq=7, sig="s-" + h)) if signed else None
        sealed, data = seal(record, GENESIS_HASH, sign)
        fields = msgspec.to_builtins(sealed)
        if not signed:
            del fields["signature"]
        assert data == msgspec.json.encode(fields, order="sorted")
        assert sealed.hash == chain_hash(fields) and check_stored(data, GENESIS_HASH) == (sealed.hash, sealed, "")
        assert (sealed.signature is not None) is signed and (not signed or sealed.signature.sig == "s-" + sealed.hash)


def test_decision_log_events_map_to_records():
    event = {
        "decision_id": "d-1", "path": "groqpolicy/policies/security_policies/decision",
        "input": {"user": "alice"}, "labels": {"id": "uuid-1", "agent": "agent-1"},
        "bundles": {"groqpolicy": {"revision": "r7"}}, "timestamp": "2026-11-27T12:00:00.5Z",
        "result": {"decision": "review", "confidence": 0.4, "reasons": ["needs a human"], "rule_id": "p-9"},
    }
    r = decision_log_record(event)
    assert (r.source, r.decision, r.decision_id, r.agent_id) == ("opa-agent", "review", "d-1", "agent-1")
    assert r.bundle_revisions == {"groqpolicy": "r7"} and r.policy_ids == ["p-9"]
    assert (r.confidence_score, r.reasons) == (0.4, ["needs a human"])
    assert len(r.input_sha256) == 64 and r.details == {"timestamp": "2026-11-27T12:00:00.5Z"}
    assert decision_log_record({"decision_id": "d", "result": True}).decision == "allow"
    assert decision_log_record({"decision_id": "d", "result": False}).decision == "deny"
    assert decision_log_record({"decision_id": "d"}).decision == "undefined"
    assert decision_log_record({"decision_id": "d", "result": [1]}).decision == "other"
    assert decision_log_record({"decision_id": "d", "result": {"decision": "maybe"}}).decision == "other"


def test_the_input_digest_ignores_key_order():
    assert digest({"b": 1, "a": {"d": 2, "c": [3]}}) == digest({"a": {"c": [3], "d": 2}, "b": 1})
    assert digest({"a": 1}) != digest({"a": 2})
