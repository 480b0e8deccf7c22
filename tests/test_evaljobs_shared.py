"""Evaluation jobs answered by every control-plane process: two control planes (each with its own
state directory and port) on one real nats-server, a real inference worker, the Groq emulator's
Batch API over the real `groq` SDK. A job submitted to one is read, listed and cancelled on the
other; one whose runner stops heartbeating (in process, or a `serve` process killed with SIGKILL) is
`interrupted` everywhere; a finished job survives a restart of both; an unreadable record in the
bucket is quarantined, never fatal; a process without JetStream at start keeps its own files."""

from __future__ import annotations

import asyncio
import time

import httpx
import nats
import pytest

from controlplane.evaljobs.shared import BUCKET
from controlplane.infra.recordkeys import KEY_DIR, SIGNING_FILE
from tests.bridge_helpers import spawn_worker, wait_for_workers
from tests.controlplane_helpers import ADMIN_HEADERS, make_settings
from tests.test_evaljobs import EV, ControlPlane, _retrieve, contexts, finished, results, submit
from tests.test_impact import JUDGE, LIMIT, policy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(tmp_path_factory, nats_server_module, emu_module):
    tmp = tmp_path_factory.mktemp("jobshare")
    url = nats_server_module.extra["url"]
    worker = spawn_worker(url, emu_module.url, tmp / "worker.log")
    planes: list[ControlPlane] = []
    try:
        asyncio.run(wait_for_workers(url, 1))
        planes.append(ControlPlane(make_settings(tmp / "a", nats_url=url), emu_module.url))
        # the deployment's record key is shared, as the supervisor's processes share it: b trusts a's policies
        shared_key = tmp / "a" / KEY_DIR / SIGNING_FILE
        planes.append(ControlPlane(make_settings(tmp / "b", nats_url=url, record_key_file=shared_key), emu_module.url))
        a, b = (httpx.Client(base_url=p.settings.base_url, headers=ADMIN_HEADERS, timeout=60) for p in planes)
        with a, b:
            for name, kind, text in (("limits", "risk_management", LIMIT), ("judge", "ethical_constraints", JUDGE)):
                r = a.post("/api/v1/policies", json=policy(name, kind, text))
                assert r.status_code == 201, r.text
            yield a, b, planes, emu_module, url
    finally:
        for plane in planes:
            plane.close()
        worker.kill()
        worker.wait()


def wait_for_batch(client: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + 15
    while (seen := client.get(f"/api/v1/evaluate/jobs/{job_id}", headers=EV).json())["batch"] is None:
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    return seen


def test_a_job_submitted_to_one_process_is_read_and_listed_on_the_other_results_in_order(pair):
    a, b, planes, *_ = pair
    assert planes[0].services.evaljobs.shared is not None and planes[1].services.evaljobs.shared is not None
    job = submit(a, contexts())
    done = finished(b, job["id"])  # polled only on the other process, from queued to completed
    assert done["state"] == "completed" and done["runner"] == planes[0].services.evaljobs.runner, done
    there = results(b, job["id"])
    assert there == results(a, job["id"])
    deadline = time.monotonic() + 10  # each download is removed once sent (after the response: wait for it)
    while list((planes[1].settings.state_dir / "evaljobs").glob("*.download")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert [r["decision"] for r in there][:2] == ["allow", "deny"] and len(there) == len(contexts())
    listed = b.get("/api/v1/evaluate/jobs", headers=EV).json()
    assert job["id"] in [j["id"] for j in listed]
    online = finished(b, submit(a, contexts(), via="online")["id"])
    assert [r["decision"] for r in results(b, online["id"])] == [r["decision"] for r in there]


def test_cancel_on_the_other_process_reaches_the_runner_and_its_batch(pair):
    a, b, _, emu, _ = pair
    emu.app.force("slow=3000", model="openai/gpt-oss-20b")
    job = submit(a, contexts(["a note cancelled elsewhere"], 2), policy_types=["ethical_constraints"])
    seen = wait_for_batch(b, job["id"])
    r = b.post(f"/api/v1/evaluate/jobs/{job['id']}/cancel", headers=EV)
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    assert a.get(f"/api/v1/evaluate/jobs/{job['id']}", headers=EV).json()["state"] == "cancelled"
    assert asyncio.run(_retrieve(emu, seen["batch"]["id"])).status in ("cancelling", "cancelled")
    r = b.get(f"/api/v1/evaluate/jobs/{job['id']}/results", headers=EV)
    assert r.status_code == 409 and "cancelled" in r.text


def test_a_runner_that_stops_heartbeating_leaves_its_job_interrupted_and_cannot_overwrite_it(pair):
    a, b, planes, emu, _ = pair
    runner, reader = planes[0].services.evaljobs, planes[1].services.evaljobs
    emu.app.force("slow=2000", model="openai/gpt-oss-20b")
    job = submit(a, contexts(["a note whose runner goes quiet"], 2), policy_types=["ethical_constraints"])
    wait_for_batch(b, job["id"])
    assert runner._heartbeat is not None
    runner._heartbeat.cancel()  # the runner goes quiet, as a process that died or was cut off
    reader.shared.stale_s = 1.0
    try:
        deadline = time.monotonic() + 15
        while (seen := b.get(f"/api/v1/evaluate/jobs/{job['id']}", headers=EV).json())["state"] != "interrupted":
            assert seen["state"] == "running" and time.monotonic() < deadline, seen
            time.sleep(0.2)
    finally:
        reader.shared.stale_s = 15.0
    assert "stopped: no heartbeat" in seen["error"] and runner.runner in seen["error"]
    deadline = time.monotonic() + 15
    while job["id"] in runner._tasks:  # the quiet runner finishes its batch; its last write is refused
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for client in (a, b):
        assert client.get(f"/api/v1/evaluate/jobs/{job['id']}", headers=EV).json()["state"] == "interrupted"
    r = b.get(f"/api/v1/evaluate/jobs/{job['id']}/results", headers=EV)
    assert r.status_code == 409 and "interrupted" in r.text


def test_a_finished_job_survives_a_restart_of_both_processes(pair):
    a, b, planes, *_ = pair
    done = finished(a, submit(a, contexts())["id"])
    kept = results(a, done["id"])
    for plane in planes:
        plane._stack.close()
    for plane in planes:
        plane.services = plane._start()
    for client in (a, b):
        assert client.get(f"/api/v1/evaluate/jobs/{done['id']}", headers=EV).json() == done
        assert results(client, done["id"]) == kept


def test_an_unreadable_record_in_the_bucket_is_quarantined_never_fatal(pair, caplog):
    a, b, _, _, url = pair
    bad = "0123456789abcdef0123456789abcdef"

    async def plant() -> bytes | None:
        nc = await nats.connect(url)
        try:
            kv = await nc.jetstream().key_value(BUCKET)
            await kv.put(f"job.{bad}", b"{not json")
            return None
        finally:
            await nc.close()

    async def quarantined() -> bytes | None:
        nc = await nats.connect(url)
        try:
            return (await (await nc.jetstream().key_value(BUCKET)).get(f"quarantine.{bad}")).value
        finally:
            await nc.close()

    good = finished(a, submit(a, contexts())["id"])  # its own, so that the test stands alone
    asyncio.run(plant())
    listed = b.get("/api/v1/evaluate/jobs", headers=EV)
    assert listed.status_code == 200 and bad not in [j["id"] for j in listed.json()]
    assert good["state"] == "completed" and good["id"] in [j["id"] for j in listed.json()]  # the good ones are still there
    assert f"evaluation job {bad}: its record in {BUCKET} is unreadable" in caplog.text
    assert asyncio.run(quarantined()) == b"{not json"
    assert a.get(f"/api/v1/evaluate/jobs/{bad}", headers=EV).status_code == 404


def test_without_jetstream_at_start_a_process_keeps_its_jobs_in_its_state_directory(pair, tmp_path):
    from controlplane.services import Services
    from tests.controlplane_helpers import running_control_plane

    _, b, planes, emu, url = pair
    settings = make_settings(tmp_path / "c", nats_url=url, record_key_file=planes[0].settings.state_dir / KEY_DIR / SIGNING_FILE)
    with pytest.MonkeyPatch.context() as env:
        env.delenv("GROQ_API_KEY", raising=False)
        env.setenv("GROQPOLICY_EMULATOR_URL", emu.url)
        env.setenv("GROQPOLICY_BATCH_POLL_S", "0.05")
        built = Services.build(settings)
    built.evaljobs.nats = lambda: None  # as when the connection is not up when the jobs start
    with running_control_plane(settings, built), \
            httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=60) as c:
        assert built.evaljobs.shared is None
        deadline = time.monotonic() + 30  # the policies a published reach c through the policy store
        while (r := c.post("/api/v1/evaluate/jobs", headers=EV, json={"contexts": contexts(), "performance_tier": "fast"})
               ).status_code == 503:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
        assert r.status_code == 202, r.text
        done = finished(c, r.json()["id"])
        assert done["state"] == "completed" and len(results(c, done["id"])) == len(contexts())
        assert (settings.state_dir / "evaljobs" / f"{done['id']}.ndjson").is_file()
        assert b.get(f"/api/v1/evaluate/jobs/{done['id']}", headers=EV).status_code == 404  # the price, as documented


def test_a_runner_process_killed_outright_leaves_its_job_interrupted(pair, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from controlplane.infra.processes import free_port, wait_for_port
    from tests.controlplane_helpers import TEST_TOKENS

    _, b, planes, emu, url = pair
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "GROQ_API_KEY"}
    env.update(GROQPOLICY_NATS_URL=url, GROQPOLICY_EMULATOR_URL=emu.url, GROQPOLICY_BATCH_POLL_S="0.05",
               GROQPOLICY_TOKENS=TEST_TOKENS, GROQPOLICY_RATE_LIMIT="off",
               GROQPOLICY_RECORD_KEY_FILE=str(planes[0].settings.state_dir / KEY_DIR / SIGNING_FILE))
    with open(tmp_path / "cp.log", "wb") as log:  # its own session: the kill reaches it and its children only
        proc = subprocess.Popen([sys.executable, "-m", "controlplane.ops.cli", "serve", "--port", str(port),
                                 "--state-dir", str(tmp_path / "state"), "--log-level", "warning"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    reader = planes[1].services.evaljobs
    try:
        wait_for_port(port, timeout=90, proc=proc)
        emu.app.force("slow=5000", model="openai/gpt-oss-20b")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            deadline = time.monotonic() + 30  # its evaluator loads the policies a published
            while (r := c.post("/api/v1/evaluate/jobs", headers=EV, json={
                    "contexts": contexts(["a note whose process is killed"], 2), "performance_tier": "fast",
                    "policy_types": ["ethical_constraints"]})).status_code == 503:
                assert time.monotonic() < deadline, r.text
                time.sleep(0.2)
        assert r.status_code == 202, r.text
        job = wait_for_batch(b, r.json()["id"])
        assert job["state"] == "running"
        os.killpg(proc.pid, signal.SIGKILL)  # no stop, no last write: only its heartbeat goes quiet
        proc.wait(10)
        reader.shared.stale_s = 2.0
        deadline = time.monotonic() + 30
        while (seen := b.get(f"/api/v1/evaluate/jobs/{job['id']}", headers=EV).json())["state"] == "running":
            assert time.monotonic() < deadline, seen
            time.sleep(0.2)
        assert seen["state"] == "interrupted" and "stopped: no heartbeat" in seen["error"], seen
        assert b.get(f"/api/v1/evaluate/jobs/{job['id']}/results", headers=EV).status_code == 409
    finally:
        reader.shared.stale_s = 15.0
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_finished_jobs_beyond_the_cap_are_pruned_and_a_full_results_store_fails_the_write_clearly(nats_server, tmp_path):
    from bridge.kernel.errors import NotFound
    from controlplane.evaljobs.schemas import Job
    from controlplane.evaljobs.shared import SharedJobs, StoreFull

    def job(i: int, state: str) -> Job:
        return Job(id=f"{i:032x}", state=state, via="online", performance_tier="fast", policy_types=[], contexts=1,
                   created_at=time.time(), finished_at=1000.0 + i if state != "running" else None,
                   heartbeat_at=time.time())

    async def run() -> None:
        nc = await nats.connect(nats_server.extra["url"])
        try:
            shared = await SharedJobs.open(nc, results_max_bytes=256 * 1024)  # a store small enough to fill
            for i, state in enumerate(["completed", "failed", "completed", "cancelled", "completed", "running"]):
                await shared.save(job(i, state))
                await shared.write_results(f"{i:032x}", b'{"decision": "allow"}\n')
            await shared.request_cancel(f"{0:032x}")
            assert await shared.prune(3) == [f"{0:032x}", f"{1:032x}"]  # the two finished first go
            assert sorted(j.id for j in await shared.listing()) == [f"{i:032x}" for i in range(2, 6)]  # running kept
            assert not await shared.cancel_requested(f"{0:032x}")
            try:
                await shared.results(f"{0:032x}", tmp_path / "gone.ndjson")
                raise AssertionError("the pruned job's results are still there")
            except NotFound:
                pass
            await shared.results(f"{2:032x}", tmp_path / "kept.ndjson")
            assert (tmp_path / "kept.ndjson").read_bytes() == b'{"decision": "allow"}\n'
            assert await shared.prune(3) == []  # at the cap: nothing more
            try:
                await shared.write_results(f"{9:032x}", b"x" * (512 * 1024))
                raise AssertionError("a results store at its max_bytes took more")
            except StoreFull as exc:
                assert "is full" in str(exc) and "not kept" in str(exc), exc
            await shared.write_results(f"{8:032x}", b"fits\n")  # the refused put left nothing behind
        finally:
            await nc.close()

    asyncio.run(run())


def test_a_runner_write_stored_without_its_acknowledgement_does_not_drop_the_job_s_end(nats_server):
    """CI once saw a job's end refused ("wrong last sequence") and the job read `interrupted` 15 s
    later: a heartbeat's publish timed out on a loaded server that had stored it, so the runner's
    recorded revision was one behind. The runner recognizes its own record and writes over it; a
    record another process marked interrupted still supersedes it; a heartbeat after the end writes
    nothing."""
    from bridge.kernel.errors import Unavailable
    from controlplane.evaljobs.schemas import Job
    from controlplane.evaljobs.shared import SharedJobs, Superseded

    class AckLost:  # the real bucket; one update stored by the server, its acknowledgement lost
        def __init__(self, kv) -> None:
            self.kv, self.lose = kv, False

        def __getattr__(self, name):
            return getattr(self.kv, name)

        async def update(self, key, value, last=None):
            revision = await self.kv.update(key, value, last=last)
            if self.lose:
                self.lose = False
                raise nats.errors.TimeoutError
            return revision

    async def run() -> None:
        nc = await nats.connect(nats_server.extra["url"])
        try:
            shared = await SharedJobs.open(nc)
            lossy = AckLost(shared.kv)
            shared.kv = lossy
            job = Job(id=uuid_hex(), state="running", via="online", performance_tier="fast", policy_types=[],
                      contexts=1, created_at=time.time(), runner="here:1/abc", heartbeat_at=time.time())
            await shared.save(job)
            lossy.lose = True
            try:
                await shared.save(job, beat=True)
                raise AssertionError("a lost acknowledgement was not reported")
            except Unavailable:
                pass
            job.state, job.finished_at = "completed", time.time()
            await shared.save(job)  # refused before: "wrong last sequence"
            assert (await shared.get(job.id)).state == "completed"
            job.heartbeat_at = time.time()
            await shared.save(job, beat=True)  # the job ended: a late heartbeat writes nothing
            assert (await shared.kv.get(f"job.{job.id}")).revision == 3

            other = Job(id=uuid_hex(), state="running", via="online", performance_tier="fast", policy_types=[],
                        contexts=1, created_at=time.time() - 60, runner="here:1/abc", heartbeat_at=time.time() - 60)
            await shared.save(other)
            reader = SharedJobs(shared.kv.kv, shared.obs)
            assert (await reader.get(other.id)).state == "interrupted"  # another process took it for dead
            other.heartbeat_at = time.time()
            try:
                await shared.save(other, beat=True)
                raise AssertionError("a job marked interrupted elsewhere was written over")
            except Superseded as exc:
                assert "interrupted there" in str(exc), exc
            assert (await reader.get(other.id)).state == "interrupted"
        finally:
            await nc.close()

    asyncio.run(run())


def uuid_hex() -> str:
    import uuid

    return uuid.uuid4().hex
