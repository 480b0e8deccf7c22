"""Local state that heals and stays bounded, without servers: decision logs and agent status replay
through a quarantine, agent status compacts, decision logs rotate, a full disk refuses instead of
losing, and an upload is split event by event (the issue's examples: torn last line, bad status
line, 600 KB result, a repeated decision id with a different result)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import msgspec
import pytest

from controlplane.agents.decision_logs import DecisionLogStore
from controlplane.agents.ingest import audit_records, screen_batch
from controlplane.agents.payloads import BadUpload
from controlplane.agents.status import HISTORY_PER_AGENT, StatusStore
from controlplane.infra.jsonlines import JsonLinesFile, StateUnavailable


def event(decision_id: str, result: object = True, **extra: object) -> dict:
    return {"decision_id": decision_id, "labels": {"id": "opa-1", "agent": "edge-1"}, "path": "p",
            "result": result, "timestamp": "2026-12-02T11:00:00.123456789Z", **extra}


def upload(store: DecisionLogStore, events: list) -> tuple[list, list]:
    accepted, refused = screen_batch(json.dumps(events).encode())
    fresh = store.triage(accepted)
    store.append(fresh)
    return fresh, refused


def lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n") if line]


# -- decision logs -------------------------------------------------------------------------------

def test_a_torn_last_line_in_decision_logs_is_quarantined_and_the_start_goes_on(tmp_path, caplog):
    store = DecisionLogStore(tmp_path)
    upload(store, [event("d-1"), event("d-2")])
    path = tmp_path / "decision_logs.jsonl"
    with open(path, "ab") as fh:  # what a crash in the middle of a write leaves
        fh.write(b'{"decision_id": "d-3", "result": {"deci')
    with caplog.at_level(logging.WARNING):
        again = DecisionLogStore(tmp_path)
    assert [e["decision_id"] for e in again.query()] == ["d-2", "d-1"] and again.total == 2
    assert (tmp_path / "decision_logs.jsonl.quarantine").read_bytes() == b'{"decision_id": "d-3", "result": {"deci\n'
    assert [r.getMessage() for r in caplog.records if "quarantine" in r.getMessage()] == [
        f"{path} line 3: unreadable record moved to decision_logs.jsonl.quarantine (torn last line (no newline)): "
        "b'{\"decision_id\": \"d-3\", \"result\": {\"deci'"]
    assert len(lines(path)) == 2  # rewritten without it: the next start quarantines nothing
    third = DecisionLogStore(tmp_path)
    assert third.total == 2 and len(lines(tmp_path / "decision_logs.jsonl.quarantine")) == 1
    upload(third, [event("d-4")])
    assert [e["decision_id"] for e in DecisionLogStore(tmp_path).query()] == ["d-4", "d-2", "d-1"]


def test_lines_of_a_shape_opa_never_sends_are_quarantined_one_by_one(tmp_path):
    path = tmp_path / "decision_logs.jsonl"
    path.write_bytes(b"\n".join([
        json.dumps(event("ok-1")).encode(),
        b'{"decision_id": "bad-labels", "labels": [1, 2]}',
        b"\x00\x01 not json",
        b'{"path": "no id"}',
        json.dumps(event("ok-2")).encode(),
    ]) + b"\n")
    store = DecisionLogStore(tmp_path)
    assert [e["decision_id"] for e in store.query()] == ["ok-2", "ok-1"]
    assert len(lines(tmp_path / "decision_logs.jsonl.quarantine")) == 3


def test_an_upload_is_split_event_by_event():
    big = event("big", result={"decision": "deny", "reasons": ["x" * 600_000]})
    events = [event("d-1"), big, event("bad-labels", labels=[1, 2]), {"path": "no id"}, event("d-2")]
    accepted, refused = screen_batch(json.dumps(events).encode())
    assert [a.decision_id for a in accepted] == ["d-1", "d-2"]
    assert [(r.index, r.decision_id) for r in refused] == [(1, "big"), (2, "bad-labels"), (3, "")]
    assert refused[0].reason.startswith("event [1]: 600") and "above the 262144-byte limit for one event" in refused[0].reason
    assert refused[1].reason == "event [2]: Expected `object`, got `array` - at `$.labels`"
    assert refused[2].reason == "event [3]: Object missing required field `decision_id`"
    assert refused[0].agent_id == "edge-1" and len(refused[0].digest) == 64
    records = audit_records(accepted, refused)
    rejected = records[2]
    assert (rejected.source, rejected.decision, rejected.decision_id) == ("opa-agent", "rejected", "big")
    assert rejected.details["rejected"]["event_sha256"] == refused[0].digest
    assert rejected.details["rejected"]["reason"] == refused[0].reason
    with pytest.raises(BadUpload, match=r"expected a JSON array of events \(Expected `array`, got `object`\)"):
        screen_batch(b'{"decision_id": "x"}')


def test_a_repeated_decision_id_with_a_different_result_is_kept_and_flagged(tmp_path):
    store = DecisionLogStore(tmp_path)
    fresh, _ = upload(store, [event("d-1", result=True), event("d-1", result=False), event("d-1", result=True)])
    assert [(a.event["result"], bool(a.repeated_of)) for a in fresh] == [(True, False), (False, True)]
    first_digest = fresh[0].digest
    first, second = audit_records(fresh, [])
    assert first.record_id == "opa-d-1" and second.record_id.startswith("opa-d-1-") and first.record_id != second.record_id
    assert second.details["repeated_decision_id"]["first_event_sha256"] == fresh[0].digest
    # the agent retrying the same upload stores nothing twice, here and after a restart
    assert upload(store, [event("d-1", result=True), event("d-1", result=False)])[0] == []
    again = DecisionLogStore(tmp_path)
    assert again.total == 2 and upload(again, [event("d-1", result=False)])[0] == []
    fresh, _ = upload(again, [event("d-1", result="third"), event("d-1", result="third")])
    assert len(fresh) == 1 and fresh[0].repeated_of == first_digest  # flagged against the first, also after a restart
    assert again.total == 3


def test_the_decision_log_memory_holds_nothing_the_garbage_collector_walks(tmp_path):
    """The tail and the ids seen are held as bytes and strings: a serving process with
    10,000 events in memory walked ~250,000 containers there at every full collection (50-150 ms
    pauses). Queries still filter by id, path and agent, and answer the events as stored, also
    after a restart."""
    import gc

    store = DecisionLogStore(tmp_path)
    gc.collect()
    upload(store, [event(f"d-{i}", result={"decision": "deny", "reasons": [f"r{i}"]}, path=f"p/{i % 3}",
                         labels={"id": f"opa-{i % 2}", "agent": f"edge-{i % 2}"}) for i in range(300)])
    upload(store, [event("d-7", result="changed")])  # a second digest under a decision id seen
    for kept in (DecisionLogStore(tmp_path), store):
        held = [*kept._tail, kept._seen._newer, kept._seen._older]
        assert len(held) == 303 and not any(gc.is_tracked(x) for x in held), [x for x in held if gc.is_tracked(x)][:3]
        assert kept._seen.get("d-7") == tuple(a.digest for a in screen_batch(json.dumps(
            [event("d-7", result={"decision": "deny", "reasons": ["r7"]}, path="p/1", labels={"id": "opa-1", "agent": "edge-1"}),
             event("d-7", result="changed")]).encode())[0])
        newest = kept.query(limit=2)
        assert [e["decision_id"] for e in newest] == ["d-7", "d-299"] and newest[0]["result"] == "changed"
        assert newest[1] == event("d-299", result={"decision": "deny", "reasons": ["r299"]}, path="p/2",
                                  labels={"id": "opa-1", "agent": "edge-1"})
        assert [e["decision_id"] for e in kept.query(decision_id="d-7")] == ["d-7", "d-7"]
        assert len(kept.query(limit=1000, path="p/1")) == 100  # d-1, d-4, ..., d-298
        assert {e["labels"]["agent"] for e in kept.query(limit=1000, agent_id="edge-0")} == {"edge-0"}


def test_decision_logs_rotate_at_their_size_limit(tmp_path):
    store = DecisionLogStore(tmp_path, max_file_bytes=2_000)
    for i in range(60):
        upload(store, [event(f"d-{i}", result="r" * 50)])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["decision_logs.jsonl", "decision_logs.jsonl.1", "decision_logs.jsonl.2", "decision_logs.jsonl.3"]
    assert all(p.stat().st_size <= 2_000 for p in tmp_path.iterdir())
    assert store.total == 60 and store.query(limit=1)[0]["decision_id"] == "d-59"


def test_a_full_disk_refuses_the_upload_and_stores_nothing(tmp_path):
    store = DecisionLogStore(tmp_path)
    upload(store, [event("before")])
    path = tmp_path / "decision_logs.jsonl"
    path.rename(tmp_path / "kept.jsonl")
    path.symlink_to("/dev/full")  # every write: ENOSPC
    accepted, _ = screen_batch(json.dumps([event("lost?")]).encode())
    with pytest.raises(StateUnavailable, match=r"state: cannot write .*decision_logs.jsonl \(No space left on device\); "
                                               r"nothing was stored"):
        store.append(store.triage(accepted))
    assert store.total == 1 and [e["decision_id"] for e in store.query()] == ["before"]
    assert store.triage(accepted) != []  # not remembered as stored: the agent's retry is taken


def test_an_unwritable_state_dir_refuses_with_503(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    file = JsonLinesFile(blocker / "decision_logs.jsonl")
    with pytest.raises(StateUnavailable) as err:
        file.append([b"{}"])
    assert err.value.status == 503 and "state: cannot open" in err.value.message


# -- agent status --------------------------------------------------------------------------------

def status(agent: str, revision: str = "r1") -> dict:
    return {"labels": {"id": f"id-{agent}", "agent": agent, "version": "1.22.3"},
            "bundles": {"groqpolicy": {"name": "groqpolicy", "active_revision": revision,
                                       "last_successful_activation": "2026-12-02T11:00:00Z"}},
            "plugins": {"bundle": {"state": "OK"}}, "metrics": {"prometheus": {"big": "m" * 1000}}}


def test_a_bad_status_line_is_quarantined_and_listings_keep_working(tmp_path):
    path = tmp_path / "agent_status.jsonl"
    good = {"received_at": 1.0, "status": {k: v for k, v in status("edge-1").items() if k != "metrics"}}
    path.write_bytes(b"\n".join([
        json.dumps({"received_at": 0.5, "status": {"labels": [1, 2]}}).encode(),  # what an older version let in
        json.dumps({"received_at": 0.7, "status": {"labels": {"id": "x"}, "bundles": [1]}}).encode(),
        json.dumps(good).encode(),
        b'{"received_at": 2.0, "status": {"lab',
    ]))
    store = StatusStore(tmp_path)
    [agent] = store.agents()
    assert (agent.id, agent.bundles[0].active_revision, agent.reports) == ("edge-1", "r1", 1)
    assert len(lines(tmp_path / "agent_status.jsonl.quarantine")) == 3
    assert len(lines(path)) == 1


def test_status_reports_are_checked_before_anything_is_written(tmp_path):
    store = StatusStore(tmp_path)
    with pytest.raises(BadUpload, match=r"^status: Expected `object`, got `array` - at `\$.labels`$"):
        store.record({"labels": [1, 2]})
    with pytest.raises(BadUpload, match=r"^status: Expected `object`, got `array` - at `\$.bundles`$"):
        store.record({"bundles": [1]})
    with pytest.raises(BadUpload, match=r"^status: Expected `object`, got `int` - at `\$.bundles\[\.\.\.\]`$"):
        store.record({"bundles": {"b": 1}})
    assert store.agents() == [] and not (tmp_path / "agent_status.jsonl").exists()


def test_agent_status_is_compacted_to_the_latest_per_agent_and_a_bounded_history(tmp_path):
    store = StatusStore(tmp_path, compact_slack=10)
    for i in range(HISTORY_PER_AGENT * 2 + 40):
        store.record(status("edge-1", f"r{i}"))
    store.record(status("edge-2"))
    path = tmp_path / "agent_status.jsonl"
    assert len(lines(path)) <= 2 * (HISTORY_PER_AGENT + 1) + 10  # compacted while running
    assert b"prometheus" not in path.read_bytes()  # the metrics dump is kept in memory only
    with open(path, "ab") as fh:  # two reports stamped the same instant (compaction orders by time only)
        for agent in ("edge-3", "edge-4"):
            fh.write(json.dumps({"received_at": 5.0, "status": {"labels": {"agent": agent}}}).encode() + b"\n")
    again = StatusStore(tmp_path)
    assert len(lines(path)) == HISTORY_PER_AGENT + 3  # and at start
    one = {a.id: a for a in again.agents()}
    assert one["edge-1"].bundles[0].active_revision == f"r{HISTORY_PER_AGENT * 2 + 39}"
    assert len(again.history("edge-1")) == HISTORY_PER_AGENT and len(again.history("edge-2")) == 1
    assert msgspec.json.decode(lines(path)[-1])["status"]["labels"]["agent"] == "edge-2"  # oldest first


def test_a_full_disk_refuses_a_status_report(tmp_path):
    (tmp_path / "agent_status.jsonl").symlink_to("/dev/full")
    store = StatusStore(tmp_path)
    with pytest.raises(StateUnavailable):
        store.record(status("edge-1"))
    assert store.agents() == []


# -- bundle revisions ----------------------------------------------------------------------------

def test_a_damaged_stored_revision_is_set_aside_and_the_rest_still_served(tmp_path):
    from controlplane.bundles.revisions import RevisionStore

    store = RevisionStore(tmp_path)
    store.activate("good", "r1", {"rego": b"rego-1"})
    store.activate("meta", "r1", {"rego": b"rego-2"})
    store.activate("torn", "r1", {"rego": b"rego-3"})
    (tmp_path / "bundles" / "meta" / "rego.json").write_bytes(b'{"bundle": ')
    (tmp_path / "bundles" / "torn" / "rego.tar.gz").write_bytes(b"rego-")
    again = RevisionStore(tmp_path)
    assert sorted(r.bundle for r in again.bundles()) == ["good"]
    assert (tmp_path / "bundles" / "meta" / "rego.json.quarantine").read_bytes() == b'{"bundle": '
    assert (tmp_path / "bundles" / "torn" / "rego.tar.gz.quarantine").read_bytes() == b"rego-"
    assert sorted(r.bundle for r in RevisionStore(tmp_path).bundles()) == ["good"]


def test_a_revision_that_cannot_be_stored_is_not_activated(tmp_path):
    from controlplane.bundles.revisions import RevisionStore

    store = RevisionStore(tmp_path)
    store.activate("b", "r1", {"rego": b"rego-1"})
    (tmp_path / "bundles" / "b" / "rego.tar.gz.tmp").mkdir()  # the write cannot happen (as on a full disk)
    with pytest.raises(StateUnavailable, match=r"state: cannot store revision 'r2' of bundle 'b' .*; it is not activated"):
        store.activate("b", "r2", {"rego": b"rego-2"})
    assert [r.revision for r in store.bundles()] == ["r1"]
    assert [r.revision for r in RevisionStore(tmp_path).bundles()] == ["r1"]


def test_decision_logs_expire_by_age_and_keep_the_live_file(tmp_path):
    now = [time.time()]
    store = DecisionLogStore(tmp_path, max_file_bytes=2_000, max_age_s=400.0, clock=lambda: now[0])
    for i in range(40):
        upload(store, [event(f"d-{i}", result="r" * 50)])
    live = tmp_path / "decision_logs.jsonl"
    rotated = [tmp_path / f"decision_logs.jsonl.{n}" for n in (1, 2, 3)]
    assert all(p.is_file() for p in rotated)
    for p in rotated[1:]:  # their newest events were written 500 s ago: past the age limit
        os.utime(p, (now[0] - 500, now[0] - 500))
    now[0] += 2
    upload(store, [event("fresh")])
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept in (["decision_logs.jsonl", "decision_logs.jsonl.1"],  # the two expired ones went, the rest stays
                    ["decision_logs.jsonl", "decision_logs.jsonl.1", "decision_logs.jsonl.2"])  # (+ a size rotation)
    assert all(p.stat().st_mtime > now[0] - 400 for p in tmp_path.iterdir())
    assert store.query(limit=1)[0]["decision_id"] == "fresh"

    # a quiet store: everything it holds is now older than the age limit; the live file is rotated
    # out from under nothing (not removed while written) and the next event starts a file of its own
    for p in tmp_path.iterdir():
        os.utime(p, (now[0] - 900, now[0] - 900))
    now[0] += 2
    upload(store, [event("later")])
    assert [json.loads(line)["decision_id"] for line in live.read_bytes().splitlines()] == ["later"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decision_logs.jsonl"]

    # a live file written for a quarter of the age rotates even below its size limit
    now[0] += 101
    upload(store, [event("next-segment")])
    assert [json.loads(line)["decision_id"] for line in live.read_bytes().splitlines()] == ["next-segment"]
    assert rotated[0].is_file()


def test_decision_logs_expired_at_start_are_not_read_back(tmp_path):
    store = DecisionLogStore(tmp_path, max_age_s=400.0)
    upload(store, [event("old")])
    live = tmp_path / "decision_logs.jsonl"
    os.utime(live, (time.time() - 500, time.time() - 500))
    again = DecisionLogStore(tmp_path, max_age_s=400.0)
    assert again.query() == [] and not (tmp_path / "decision_logs.jsonl.1").exists()
    assert DecisionLogStore(tmp_path, max_age_s=0).query() == []  # removed, not merely hidden


def test_the_ids_seen_keep_at_least_the_newest_half_and_at_most_the_bound(monkeypatch):
    from controlplane.agents import decision_logs

    monkeypatch.setattr(decision_logs, "SEEN_IDS", 10)
    store = DecisionLogStore(None)
    for i in range(23):
        upload(store, [event(f"d-{i}")])
    # ids go to a newer half of 5; when it is full it becomes the older half and the older is dropped
    assert [i for i in range(23) if store._seen.get(f"d-{i}")] == list(range(15, 23))  # never fewer than 5
    assert upload(store, [event("d-22")])[0] == []  # a retry of a recent one is still told apart
    fresh, _ = upload(store, [event("d-0")])  # long forgotten: stored again, not flagged
    assert len(fresh) == 1 and fresh[0].repeated_of == ""
