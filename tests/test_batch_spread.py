"""A batch split across two control-plane processes of one deployment (`GROQPOLICY_PROCESSES=2`):
the process that took the request decides one share and another process the other, through
`policy.evaluate.chunk` on NATS; the answers are those one process gives, the batch is one audit
record, and with no other process to ask (or one on another revision) the origin decides it all."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import httpx
import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.evaluation import spread as spread_module
from controlplane.evaluation.spread import LEARN, MIN_CHUNK, PROBE_EVERY, SplitChoice, bounds
from tests.controlplane_helpers import ADMIN_HEADERS, make_settings, running_control_plane
from tests.test_evaluate_nats import limit, wait_until

H = CONSTITUTIONAL_HASH


def test_bounds_cut_equal_shares_never_below_the_minimum():
    assert bounds(100, 2) == [(0, 50), (50, 100)]
    assert bounds(101, 3) == [(0, 34), (34, 68), (68, 101)]
    assert bounds(2 * MIN_CHUNK - 1, 2) == [(0, 2 * MIN_CHUNK - 1)]  # too small to be worth a round trip
    assert bounds(100, 1) == [(0, 100)]


def _batch(client: httpx.Client, amounts: list[int]) -> list[dict]:
    r = client.post("/api/v1/evaluate/batch", json={"batch_contexts": [{"principal": f"p{i}", "amount": a} for i, a in enumerate(amounts)],
                                                   "policy_types": ["risk_management"], "constitutional_hash": H})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_split_choice_times_both_ways_then_takes_the_faster_and_still_tries_the_other():
    choice = SplitChoice()
    first = []
    for _ in range(2 * LEARN):  # each way timed LEARN times, splitting first (what the deployment asked for)
        way = choice.split()
        first.append(way)
        choice.took(way, 0.0060 if way else 0.0035, 100)  # split: 60 µs per context; whole: 35
    assert first == [True] * LEARN + [False] * LEARN
    ways = [choice.split() for _ in range(4 * PROBE_EVERY)]
    assert ways.count(True) == 4, ways  # one probe of the slower way per PROBE_EVERY batches
    assert not any(ways[:PROBE_EVERY - 1])

    # the load changes: splitting becomes the faster way, and the probes see it
    while choice.split() is False:
        pass
    for _ in range(20):
        choice.took(True, 0.0020, 100)
    assert choice.split() is True
    assert sum(choice.split() for _ in range(PROBE_EVERY)) == PROBE_EVERY - 1


def _limits(client: httpx.Client) -> tuple[dict, list[int], list[str]]:
    """A policy denying amounts above 100 stored through `client`; a batch's amounts and its decisions."""
    created = client.post("/api/v1/policies", json={"name": "limits", "policy_type": "risk_management", "opa_policy": limit(100),
                                                    "constitutional_hash": H}).json()
    amounts = [(i * 37) % 200 for i in range(100)]
    return created, amounts, ["deny" if x > 100 else "allow" for x in amounts]


@pytest.fixture
def always_split(monkeypatch):
    """The split's own mechanics under test: every splittable batch split (no timing either way)."""
    monkeypatch.setattr(spread_module, "LEARN", 10_000)


@pytest.fixture
def two_processes(tmp_path, nats_server):
    url = nats_server.extra["url"]
    shared = {"record_key_file": tmp_path / "record-key.pem", "bridge_token_file": tmp_path / "bridge-token",
              "nats_url": url, "compile_on_start": True, "processes": 2}
    a = make_settings(tmp_path / "a", **shared)
    b = make_settings(tmp_path / "b", **shared)
    with running_control_plane(a) as sa, httpx.Client(base_url=a.base_url, headers=ADMIN_HEADERS, timeout=60) as ca:
        yield a, sa, ca, b


def test_a_batch_is_split_across_the_processes_and_answers_as_one(two_processes, always_split):
    _, sa, ca, b = two_processes
    created, amounts, expected = _limits(ca)
    spread = sa.runtime.pipeline.spread
    assert spread.enabled

    # alone: the other share has no process to go to but its origin, which decides it itself
    assert [r["decision"] for r in _batch(ca, amounts)] == expected
    assert spread.answered_elsewhere == 0

    with running_control_plane(b) as sb:
        wait_until(lambda: sb.runtime.evaluator.revision == created["bundle_revision"])
        for _ in range(5):
            results = _batch(ca, amounts)
            assert [r["decision"] for r in results] == expected
            assert [r["input_context"]["principal"] for r in results] == [f"p{i}" for i in range(100)]
            assert len({r["evaluation_id"] for r in results}) == 100
        # five batches, each share asked up to four times of a group of two: the other process answered
        assert spread.answered_elsewhere >= 1, (spread.sent, spread.answered_elsewhere)
        assert sb.runtime.service.answered == 0  # chunks are not `policy.evaluate` requests: counted apart

        # B on another revision (it has not followed a write yet) refuses: A decides the share itself
        before = spread.answered_elsewhere
        pipeline_b = sb.runtime.pipeline
        evaluator_b, pipeline_b.evaluator = pipeline_b.evaluator, SimpleNamespace(revision="some-other-revision")
        try:
            assert [r["decision"] for r in _batch(ca, amounts)] == expected
        finally:
            pipeline_b.evaluator = evaluator_b
        assert spread.answered_elsewhere == before

    # every batch is one audit record at its origin, whoever decided its shares
    deadline = time.monotonic() + 30
    while True:
        page = ca.get("/api/v1/audit", params={"limit": 1000, "source": "batch"}).json()
        if len(page["records"]) >= 7 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(page["records"]) == 7, len(page["records"])


def test_an_agents_status_taken_by_one_process_is_listed_by_every_process(tmp_path, nats_server):
    """An agent posts its status to whichever process took its connection; `groqpolicy agents`
    may be answered by another."""
    from tests.controlplane_helpers import AGENT_TOKEN, bearer
    from tests.test_agent_state import status

    shared = {"record_key_file": tmp_path / "record-key.pem", "bridge_token_file": tmp_path / "bridge-token",
              "nats_url": nats_server.extra["url"], "processes": 2}
    a, b = make_settings(tmp_path / "a", **shared), make_settings(tmp_path / "b", **shared)
    with running_control_plane(a), running_control_plane(b) as sb, \
            httpx.Client(base_url=a.base_url, timeout=30) as ca, httpx.Client(base_url=b.base_url, headers=ADMIN_HEADERS, timeout=30) as cb:
        assert ca.post("/status", json=status("edge-7", "r9"), headers=bearer(AGENT_TOKEN)).status_code == 204
        wait_until(lambda: [x["id"] for x in cb.get("/api/v1/opa/agents").json()] == ["edge-7"])
        assert cb.get("/api/v1/opa/agents/edge-7").json()["status"]["labels"]["id"] == "id-edge-7"
        assert sb.status_sharing.received == 1
        # a copy that does not check out is not stored (it was checked where the agent posted it)
        bad = ca.post("/status", json={"labels": [1, 2]}, headers=bearer(AGENT_TOKEN))
        assert bad.status_code == 400
        time.sleep(0.5)
        assert sb.status_sharing.received == 1


def test_a_chunk_its_origin_gave_up_on_is_stopped_where_it_was_being_decided(two_processes, always_split, monkeypatch):
    """The origin waits `TIMEOUT_S` for a share, then decides it itself; the process that had it
    stops at that budget (the request says it) instead of finishing work nobody reads, which on a
    loaded machine held the evaluation threads the next batches needed."""
    _, sa, ca, b = two_processes
    created, amounts, expected = _limits(ca)
    monkeypatch.setattr(spread_module, "TIMEOUT_S", 1.0)
    with running_control_plane(b) as sb:
        wait_until(lambda: sb.runtime.evaluator.revision == created["bundle_revision"])
        began: list[float] = []
        stopped: list[float] = []

        async def never_in_time(*args, **kwargs):
            began.append(time.monotonic())
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                stopped.append(time.monotonic())
                raise

        monkeypatch.setattr(sb.runtime.pipeline.spread, "_decide_many", never_in_time)
        for _ in range(8):  # the queue group may hand the share back to its origin every time it asks
            assert [r["decision"] for r in _batch(ca, amounts)] == expected  # decided by the origin itself
            if began:
                break
        assert began, "the other process never got a share"
        wait_until(lambda: bool(stopped))
        assert stopped[0] - began[0] < 5, stopped[0] - began[0]  # the origin's 1 s, not the 30 s of the work
    assert sa.runtime.pipeline.spread.answered_elsewhere == 0


def test_batches_are_kept_whole_while_splitting_them_has_been_slower(two_processes, monkeypatch):
    """The other process takes 300 ms more per share than the origin needs for the whole batch: after
    timing both ways the origin decides batches whole, but for one probe in `PROBE_EVERY`."""
    _, sa, ca, b = two_processes
    created, amounts, expected = _limits(ca)
    spread = sa.runtime.pipeline.spread
    with running_control_plane(b) as sb:
        wait_until(lambda: sb.runtime.evaluator.revision == created["bundle_revision"])
        slow = sb.runtime.pipeline.spread
        decide = slow._decide_many

        async def late(*args, **kwargs):
            await asyncio.sleep(0.3)
            return await decide(*args, **kwargs)

        monkeypatch.setattr(slow, "_decide_many", late)
        for _ in range(2 * LEARN):
            assert [r["decision"] for r in _batch(ca, amounts)] == expected
        assert spread.choice.timed == {True: LEARN, False: LEARN}
        assert spread.choice.mean_s[True] > spread.choice.mean_s[False]
        kept, sent = spread.choice.timed[False], spread.sent
        for _ in range(PROBE_EVERY):
            assert [r["decision"] for r in _batch(ca, amounts)] == expected
        assert spread.choice.timed[False] - kept == PROBE_EVERY - 1  # decided whole here
        assert spread.sent - sent == 1  # the probe's one share
