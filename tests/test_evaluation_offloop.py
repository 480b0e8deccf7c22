"""Evaluation never blocks the control plane's event loop: with 8 runaway policies running into
their deadlines, `/health`, bundle serving, a bundle long poll and a cheap evaluation still answer
(while the runaways are still in flight); the 9th runaway finds the threads and the queue full and
gets 503 with Retry-After (both evaluation APIs over HTTP, and `policy.evaluate` on NATS); every
runaway fails with the same error kind. Real control plane (uvicorn on loopback), real
nats-server, policies compiled by the real `opa`."""

from __future__ import annotations

import asyncio

import httpx
import msgspec
import nats
import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH as H
from controlplane.evaluation.schemas import EVALUATE_SUBJECT
from tests.controlplane_helpers import ADMIN_HEADERS, AGENT_TOKEN, bearer, make_settings, running_control_plane

RUNAWAY = """package runaway

import rego.v1

spin if {
\tsome i in numbers.range(1, input.n)
\tsome j in numbers.range(1, input.n)
\ti == 0 - j
}

decision := {"decision": "allow", "confidence": 1, "reasons": ["never reached for a large n"]} if not spin
"""
CPUS, QUEUE = 2, 6  # 8 runaways fill the compute threads and their queue
LONG = {"principal": "alice", "n": 100_000}  # 10^10 iterations: runs into the 1 s deadline
SHORT = {"principal": "alice", "n": 3}


@pytest.fixture(scope="module")
def cp(tmp_path_factory, nats_server_module, opa_bin):
    settings = make_settings(tmp_path_factory.mktemp("offloop") / "state", nats_url=nats_server_module.extra["url"],
                             evaluation_threads=2, evaluation_cpu_threads=CPUS, evaluation_queue=QUEUE)
    with running_control_plane(settings) as services, \
            httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=60) as client:
        r = client.post("/api/v1/policies", json={"name": "runaway", "policy_type": "risk_management", "opa_policy": RUNAWAY,
                                                  "performance_tier": "nano", "constitutional_hash": H})
        assert r.status_code == 201, r.text
        yield settings, services, r.json()["rule_id"]


def _opa_evaluate(rule_id: str, ctx: dict) -> dict:
    return {"policy_id": rule_id, "input_data": ctx, "use_wasm": True}


def _evaluate(ctx: dict) -> dict:
    return {"input_context": ctx, "policy_types": ["risk_management"], "performance_tier": "nano", "constitutional_hash": H}


async def test_the_loop_answers_while_runaways_run_and_a_full_queue_is_503(cp):
    settings, services, rule_id = cp
    compute = services.runtime.pipeline.scheduler.compute
    async with httpx.AsyncClient(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=60) as client:
        agent = {"Authorization": bearer(AGENT_TOKEN)["Authorization"]}
        etag = (await client.get("/bundles/groqpolicy", headers=agent)).headers["etag"]
        runaways = [asyncio.create_task(client.post("/api/v1/opa/evaluate", json=_opa_evaluate(rule_id, LONG)))
                    for _ in range(CPUS + QUEUE)]
        for _ in range(500):  # until all 8 are on a thread or waiting for one
            if compute.admitted == CPUS + QUEUE:
                break
            await asyncio.sleep(0.01)
        assert compute.admitted == CPUS + QUEUE

        # full: one more runaway is refused at once, over HTTP (both APIs) and NATS, with a retry hint
        full = await client.post("/api/v1/opa/evaluate", json=_opa_evaluate(rule_id, LONG))
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert full.json()["error"]["code"] == "evaluation_saturated"
        assert "compute evaluation threads are busy" in full.json()["error"]["message"]
        piped = await client.post("/api/v1/evaluate", json=_evaluate(LONG))
        assert piped.status_code == 503 and piped.json()["error"]["code"] == "evaluation_saturated"
        nc = await nats.connect(settings.nats_url)
        try:
            busy = await nc.request(EVALUATE_SUBJECT, msgspec.json.encode(_evaluate(LONG)), timeout=10)
            assert busy.headers["Nats-Service-Error-Code"] == "503"
            assert msgspec.json.decode(busy.data)["error"]["code"] == "evaluation_saturated"
        finally:
            await nc.close()

        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["constitutional_hash"] == H
        assert compute.admitted > 0 and not all(t.done() for t in runaways)  # answered while they ran
        bundle = await client.get("/bundles/groqpolicy", headers=agent)
        assert bundle.status_code == 200 and bundle.headers["etag"] == etag
        cheap = await client.post("/api/v1/evaluate", json=_evaluate(SHORT))  # fits inline: no thread needed
        assert cheap.status_code == 200 and cheap.json()["decision"] == "allow", cheap.text
        assert compute.admitted > 0

        poll = await client.get("/bundles/groqpolicy", headers={**agent, "If-None-Match": etag,
                                                                 "Prefer": "modes=snapshot,delta;wait=1"})
        assert poll.status_code == 304
        assert compute.admitted > 0 and not all(t.done() for t in runaways)  # the second four still run

        answers = await asyncio.gather(*runaways)
        assert {(r.status_code, r.json()["error"]["type"]) for r in answers} == {(504, "Upstream")}
        assert all("deadline exceeded" in r.json()["error"]["message"] for r in answers)
        # alone, the same kind again; through the pipeline the same runaway is a deny (fail closed)
        again = await client.post("/api/v1/opa/evaluate", json=_opa_evaluate(rule_id, LONG))
        assert again.status_code == 504
        denied = (await client.post("/api/v1/evaluate", json=_evaluate(LONG))).json()
        assert denied["decision"] == "deny" and "DeadlineExceeded" in denied["policy_results"][0]["error"]
    assert compute.admitted == 0
