"""The agents' decision-log files keep a bounded retention (size and age), dropping the oldest whole
segments, and a line that does not decode is skipped and counted, never fatal."""

from __future__ import annotations

import os
import time

from controlplane.agents.decision_logs import CURRENT, DecisionLogStore


def event(i: int) -> dict:
    return {"decision_id": f"d{i:05d}", "path": "groqpolicy/rules/p/decision", "result": {"decision": "allow"}, "pad": "x" * 60}


def test_size_limit_drops_the_oldest_segments(tmp_path):
    store = DecisionLogStore(tmp_path, max_bytes=8_000, max_age_s=0)  # segments of 1,000 bytes
    for i in range(400):
        store.append([event(i)])
    on_disk = store.disk_bytes()
    assert 0 < on_disk <= 8_000 + 1_200  # the limit, plus at most what one append adds before rotating
    assert len(store.segments()) >= 5
    assert store.total == 400  # a counter of what was received
    assert [e["decision_id"] for e in store.query(limit=3)] == ["d00399", "d00398", "d00397"]

    again = DecisionLogStore(tmp_path, max_bytes=8_000, max_age_s=0)  # a restart sees what is retained
    kept = [e["decision_id"] for e in again.query(limit=1_000)]
    assert kept[0] == "d00399" and "d00000" not in kept
    assert again.total == len(kept) < 400
    assert kept == sorted(kept, reverse=True)  # newest first, with no hole in what is kept
    assert int(kept[-1][1:]) + len(kept) - 1 == 399


def test_age_limit_drops_segments_whose_newest_event_is_too_old(tmp_path):
    store = DecisionLogStore(tmp_path, max_bytes=4_000, max_age_s=0)
    for i in range(100):
        store.append([event(i)])
    old = store.segments()[:2]
    long_ago = time.time() - 3 * 86400
    for path in old:
        os.utime(path, (long_ago, long_ago))
    fresh = DecisionLogStore(tmp_path, max_bytes=4_000, max_age_s=86400)
    assert not any(p.exists() for p in old)
    assert fresh.segments() and all(p not in old for p in fresh.segments())
    assert fresh.query(limit=1)[0]["decision_id"] == "d00099"


def test_no_limit_keeps_everything(tmp_path):
    store = DecisionLogStore(tmp_path, max_bytes=0, max_age_s=0)
    for i in range(50):
        store.append([event(i), event(1000 + i)])
    assert store.segments() == [] and DecisionLogStore(tmp_path, max_bytes=0, max_age_s=0).total == 100


def test_a_line_that_does_not_decode_is_quarantined_not_fatal(tmp_path):
    store = DecisionLogStore(tmp_path)
    store.append([event(1), event(2)])
    with open(tmp_path / CURRENT, "ab") as fh:
        fh.write(b'{"decision_id": "torn", "res\n')
    store.append([event(3)])
    again = DecisionLogStore(tmp_path)
    assert again.quarantined == 1 and again.total == 3
    assert [e["decision_id"] for e in again.query()] == ["d00003", "d00002", "d00001"]
