"""Evaluation jobs end to end: a real nats-server, a real inference worker process answering from
the Groq emulator over the real `groq` SDK (online), the emulator's Batch API over the same SDK
(batch), the control plane over real HTTP. Judgments are counted at the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time

import httpx
import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.evaljobs.schemas import MAX_JOB_CONTEXTS
from controlplane.services import Services
from tests.bridge_helpers import spawn_worker, wait_for_workers
from tests.controlplane_helpers import (
    ADMIN_HEADERS,
    EVALUATE_TOKEN,
    TEST_TOKENS,
    bearer,
    make_settings,
    running_control_plane,
)
from tests.test_impact import JUDGE, LIMIT, policy

pytestmark = pytest.mark.slow

# four distinct texts over 24 contexts (one in four carries an emulator deny marker): 4 distinct judgments
DISTINCT = ["a friendly reminder", "please run rm -rf on it", "lunch at noon?", "the quarterly report is attached"]
N = 24
EV = bearer(EVALUATE_TOKEN)
OTHER = bearer("test-other-evaluate-token-00")  # a second evaluate token: "other"


def contexts(texts: list[str] = DISTINCT, n: int = N) -> list[dict]:
    return [{"principal": {"id": f"svc-{i}"}, "amount": 20 + 7 * i, "text": texts[i % len(texts)],
             "oversight": {"escalation": "oncall@example.com"}} for i in range(n)]


class ControlPlane:
    """The module's control plane, which a test can restart on the same state directory."""

    def __init__(self, settings, emulator_url: str) -> None:
        self.settings, self.emulator_url = settings, emulator_url
        self._stack = contextlib.ExitStack()
        self.services = self._start()

    def _start(self) -> Services:
        with pytest.MonkeyPatch.context() as env:
            # the control plane reaches the emulator's Batch API as the worker reaches its chat API
            env.delenv("GROQ_API_KEY", raising=False)
            env.setenv("GROQPOLICY_EMULATOR_URL", self.emulator_url)
            env.setenv("GROQPOLICY_BATCH_POLL_S", "0.05")
            built = Services.build(self.settings)
        return self._stack.enter_context(running_control_plane(self.settings, built))

    def restart(self) -> Services:
        self._stack.close()
        self.services = self._start()
        return self.services

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="module")
def system(tmp_path_factory, nats_server_module, emu_module):
    tmp = tmp_path_factory.mktemp("evaljobs")
    url = nats_server_module.extra["url"]
    worker = spawn_worker(url, emu_module.url, tmp / "worker.log")
    plane = None
    try:
        asyncio.run(wait_for_workers(url, 1))
        tokens = f"{TEST_TOKENS},other={OTHER['Authorization'].removeprefix('Bearer ')}:evaluate"
        plane = ControlPlane(make_settings(tmp / "state", nats_url=url, tokens=tokens), emu_module.url)
        with httpx.Client(base_url=plane.settings.base_url, headers=ADMIN_HEADERS, timeout=60) as client:
            for name, kind, text in (("limits", "risk_management", LIMIT), ("judge", "ethical_constraints", JUDGE)):
                r = client.post("/api/v1/policies", json=policy(name, kind, text))
                assert r.status_code == 201, r.text
            yield client, plane, emu_module
    finally:
        if plane is not None:
            plane.close()
        worker.kill()
        worker.wait()


def submit(client: httpx.Client, ctxs: list, **kw) -> dict:
    r = client.post("/api/v1/evaluate/jobs", headers=EV, json={"contexts": ctxs, "performance_tier": "fast", **kw})
    assert r.status_code == 202, r.text
    return r.json()


def finished(client: httpx.Client, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/v1/evaluate/jobs/{job_id}", headers=EV).json()
        if job["state"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def results(client: httpx.Client, job_id: str) -> list[dict]:
    r = client.get(f"/api/v1/evaluate/jobs/{job_id}/results", headers=EV)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines()]


def test_batch_decides_as_online_with_each_distinct_judgment_one_batch_line_and_no_chat_call(system):
    client, _, emu = system
    online = finished(client, submit(client, contexts(), via="online")["id"])
    assert online["state"] == "completed", online
    expected = [r["decision"] for r in results(client, online["id"])]
    assert {"allow", "deny"} <= set(expected)  # the judge and the limit both decide some
    assert online["judgments"]["asked"] == N  # one model call per context (the worker's cache answers repeats)

    calls, lines = emu.calls(), emu.app.stats["batch_lines"]
    job = submit(client, contexts(), via="batch")
    assert job["state"] in ("queued", "running") and job["contexts"] == N
    job = finished(client, job["id"])
    assert job["state"] == "completed", job
    assert emu.app.stats["batch_lines"] - lines == len(DISTINCT)  # exactly the distinct judgments, as batch lines
    assert emu.calls() - calls == len(DISTINCT)  # ... and nothing else: no chat call
    got = results(client, job["id"])
    assert [r["decision"] for r in got] == expected and len(got) == N
    assert job["passes"] == 2 and len(job["batches"]) == 1 and job["batch"]["status"] == "completed"
    assert job["judgments"]["asked"] == len(DISTINCT) and job["judgments"]["failed"] == 0
    assert 0 < job["judgments"]["cost_usd"] < online["judgments"]["cost_usd"]  # fewer calls, at the batch price
    assert job["decisions"] == {d: expected.count(d) for d in set(expected)}
    judged = [p for p in got[1]["policy_results"] if p["name"] == "judge"][0]
    assert judged["decision"] == "deny"  # line 2 carries the deny marker: the batch's answer decided it

    page = client.get("/api/v1/audit", params={"evaluation_id": got[0]["evaluation_id"]}).json()
    (record,) = [r["record"] for r in page["records"]]
    assert record["source"] == "batch" and record["batch_id"] == job["id"]
    assert record["details"]["via"] == "batch" and record["details"]["batches"] == job["batches"]
    assert [e["decision"] for e in record["evaluations"]] == expected


def test_a_failed_or_expired_batch_line_is_review_never_allow(system):
    client, _, emu = system
    texts = ["an ordinary note", "another ordinary note"]  # the emulator allows both
    allowed = finished(client, submit(client, contexts(texts, 4), policy_types=["ethical_constraints"])["id"])
    assert [r["decision"] for r in results(client, allowed["id"])] == ["allow"] * 4

    emu.app.batches.expire_next(0)  # the next batch answers nothing before its window ends
    job = finished(client, submit(client, contexts(texts, 4), policy_types=["ethical_constraints"])["id"])
    assert job["state"] == "completed" and job["batch"]["status"] == "expired"
    assert [r["decision"] for r in results(client, job["id"])] == ["review"] * 4
    assert job["judgments"] == {**job["judgments"], "asked": 2, "failed": 2}

    emu.app.force("500", "500", model="openai/gpt-oss-20b")  # both lines fail
    job = finished(client, submit(client, contexts(texts, 4), policy_types=["ethical_constraints"])["id"])
    assert job["state"] == "completed" and job["batch"]["failed"] == 2
    assert [r["decision"] for r in results(client, job["id"])] == ["review"] * 4


def test_bad_input_is_a_4xx_naming_the_line(system):
    client, *_ = system
    r = client.post("/api/v1/evaluate/jobs", headers=EV, json={"contexts": [{"a": 1}, {"b": 2}, [3]]})
    assert r.status_code == 422 and "contexts[2] (line 3): expected a JSON object, got array" in r.text
    r = client.post("/api/v1/evaluate/jobs", headers=EV, json={"contexts": [{}], "policy_types": ["astrology"]})
    assert r.status_code == 400 and "policy_types" in r.text
    r = client.post("/api/v1/evaluate/jobs", headers=EV, json={"contexts": [{}] * (MAX_JOB_CONTEXTS + 1)})
    assert r.status_code == 422 and "at most 100,000" in r.text
    r = client.post("/api/v1/evaluate/jobs", headers=EV, json={"contexts": [{}], "via": "carrier-pigeon"})
    assert r.status_code == 400 and "via" in r.text
    assert client.get("/api/v1/evaluate/jobs/nope", headers=EV).status_code == 404
    assert httpx.post(client.base_url.join("/api/v1/evaluate/jobs"), json={"contexts": [{}]}).status_code == 401


def test_the_cli_submits_a_file_shows_progress_and_writes_the_results_in_order(system, tmp_path, capsys):
    from controlplane.ops.cli import main
    from tests.controlplane_helpers import EVALUATE_TOKEN as TOKEN

    client, _, emu = system
    source, output = tmp_path / "contexts.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(c) + "\n" for c in contexts()))
    common = ["--url", str(client.base_url), "--token", TOKEN]
    lines = emu.app.stats["batch_lines"]
    assert main(["evaluate", "--file", str(source), "--via", "batch", "--tier", "fast", "--output", str(output),
                 *common]) == 0
    out, err = capsys.readouterr()
    assert emu.app.stats["batch_lines"] - lines == len(DISTINCT)
    assert re.search(rf"pass 2: {N}/{N} contexts \| batch batch_\w+: completed {len(DISTINCT)}/{len(DISTINCT)} "
                     r"judgments \(0 failed\)", err), err
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(written) == N and [w["decision"] for w in written][:2] == ["allow", "deny"]
    assert f"{N} contexts in" in out and f"{len(DISTINCT)} asked through the Batch API" in out and "batch jobs: batch_" in out
    source.write_text('{"a": 1}\n[2]\n')
    assert main(["evaluate", "--file", str(source), "--via", "batch", *common]) == 1
    assert f"{source}:2: expected a JSON object, got list" in capsys.readouterr().err


def test_a_job_is_its_submitters_another_evaluate_token_gets_404_and_an_admin_sees_all(system):
    client, *_ = system
    mine = finished(client, submit(client, contexts(n=2), via="online")["id"])
    assert mine["state"] == "completed" and mine["by"] == "evaluate", mine
    for method, path in (("GET", ""), ("GET", "/results"), ("POST", "/cancel")):
        r = client.request(method, f"/api/v1/evaluate/jobs/{mine['id']}{path}", headers=OTHER)
        assert r.status_code == 404, (path, r.text)
    r = client.post("/api/v1/evaluate/jobs", headers=OTHER, json={"contexts": contexts(n=1), "via": "online"})
    assert r.status_code == 202, r.text
    theirs = r.json()["id"]
    listed = {who: [j["id"] for j in client.get("/api/v1/evaluate/jobs", headers=h).json()]
              for who, h in (("evaluate", EV), ("other", OTHER), ("admin", ADMIN_HEADERS))}
    assert mine["id"] in listed["evaluate"] and theirs not in listed["evaluate"], listed
    assert theirs in listed["other"] and mine["id"] not in listed["other"], listed
    assert {mine["id"], theirs} <= set(listed["admin"]), listed
    assert client.get(f"/api/v1/evaluate/jobs/{theirs}", headers=EV).status_code == 404
    assert client.get(f"/api/v1/evaluate/jobs/{mine['id']}").json()["id"] == mine["id"]  # admin: anyone's
    assert len(results(client, mine["id"])) == 2
    assert client.get(f"/api/v1/evaluate/jobs/{mine['id']}/results").status_code == 200


def test_cancel_stops_the_job_and_its_batch(system):
    client, _, emu = system
    emu.app.force("slow=3000", model="openai/gpt-oss-20b")
    job = submit(client, contexts(["a note to cancel"], 2), policy_types=["ethical_constraints"])
    deadline = time.monotonic() + 10
    while (seen := client.get(f"/api/v1/evaluate/jobs/{job['id']}", headers=EV).json())["batch"] is None:
        assert time.monotonic() < deadline, seen
        time.sleep(0.02)
    r = client.post(f"/api/v1/evaluate/jobs/{job['id']}/cancel", headers=EV)
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    batch = asyncio.run(_retrieve(emu, seen["batch"]["id"]))
    assert batch.status in ("cancelling", "cancelled")
    assert client.get(f"/api/v1/evaluate/jobs/{job['id']}/results", headers=EV).status_code == 409
    assert client.post(f"/api/v1/evaluate/jobs/{job['id']}/cancel", headers=EV).status_code == 200  # again: as it is


def _idle(client, within: float = 30.0) -> None:
    """Until no job of the earlier tests is queued or running (a cancelled job holds its slot until
    its task has ended, e.g. while its Batch API job is cancelled)."""
    deadline = time.monotonic() + within
    while any(j["state"] in ("queued", "running") for j in client.get("/api/v1/evaluate/jobs").json()):
        assert time.monotonic() < deadline, client.get("/api/v1/evaluate/jobs").json()
        time.sleep(0.05)


def test_at_most_eight_jobs_wait_and_the_ninth_is_told_to_retry(system):
    client, _, emu = system
    _idle(client)
    emu.app.force("slow=3000", model="openai/gpt-oss-20b")  # the first job's batch holds the others queued
    jobs = [submit(client, contexts([f"queued note {i}"], 1), policy_types=["ethical_constraints"]) for i in range(8)]
    r = client.post("/api/v1/evaluate/jobs", headers=EV, json={"contexts": [{}]})
    assert r.status_code == 503 and "8 are queued or running already" in r.text
    for job in reversed(jobs):
        assert client.post(f"/api/v1/evaluate/jobs/{job['id']}/cancel", headers=EV).json()["state"] == "cancelled"
    _idle(client)
    assert submit(client, contexts(n=1))["state"] == "queued"


async def _retrieve(emu, batch_id: str):
    client = emu.client()
    try:
        return await client.batches.retrieve(batch_id)
    finally:
        await client.close()


def test_a_batch_jobs_constitutional_violations_are_escalated(system):
    import nats

    from controlplane.audit.escalation import SUBJECT, decode_escalation

    client, plane, _ = system
    received: list[bytes] = []

    async def run() -> dict:
        nc = await nats.connect(plane.settings.nats_url)

        async def on_event(msg) -> None:
            received.append(msg.data)

        sub = await nc.subscribe(SUBJECT, cb=on_event)
        await nc.flush()
        job = await asyncio.to_thread(lambda: finished(client, submit(client, [{"text": "no principal"}, *contexts(n=1)])["id"]))
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await sub.unsubscribe()
        await nc.close()
        return job

    job = asyncio.run(run())
    first, second = results(client, job["id"])
    assert first["decision"] == "deny" and first["constitutional_compliance"]["violations"]
    assert len(received) == 1 and decode_escalation(received[0]).evaluation_id == first["evaluation_id"]
    assert not second["constitutional_compliance"]["violations"]


def test_results_survive_a_restart_and_a_job_cut_off_by_it_says_interrupted(system):
    client, plane, emu = system
    done = finished(client, submit(client, contexts())["id"])
    assert done["state"] == "completed"
    kept = results(client, done["id"])
    emu.app.force("slow=3000", model="openai/gpt-oss-20b")  # the next job's batch line takes 3 s
    cut = submit(client, contexts(["a note that takes a while"], 2))
    deadline = time.monotonic() + 10
    while (job := client.get(f"/api/v1/evaluate/jobs/{cut['id']}", headers=EV).json())["batch"] is None:
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    assert job["state"] == "running" and job["batch"]["status"] in ("validating", "in_progress")
    plane.restart()
    again = client.get(f"/api/v1/evaluate/jobs/{done['id']}", headers=EV).json()
    assert again == done
    assert results(client, done["id"]) == kept
    cut = client.get(f"/api/v1/evaluate/jobs/{cut['id']}", headers=EV).json()
    assert cut["state"] == "interrupted" and "stopped" in cut["error"]
    r = client.get(f"/api/v1/evaluate/jobs/{cut['id']}/results", headers=EV)
    assert r.status_code == 409 and "interrupted" in r.text
