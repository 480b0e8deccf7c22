"""The replay store, impact analysis and shadow mode, end to end: a real nats-server (JetStream), a
real inference worker process answering from the Groq emulator over the real `groq` SDK, the
control plane over real HTTP with its in-process evaluator. Model calls are counted at the emulator."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import httpx
import nats
import pytest

from bridge.inference.catalog import default_catalog
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.impact import replay
from controlplane.ops.impact_commands import render_report
from controlplane.services import Services
from tests.bridge_helpers import spawn_worker, wait_for_workers
from tests.controlplane_helpers import ADMIN_HEADERS, EVALUATE_TOKEN, bearer, make_settings, running_control_plane

pytestmark = pytest.mark.slow

LIMIT = """package limits

import data.groqpolicy.lib.decision as doc

deny_reasons contains "amount above 100" if input.amount > 100

decision := doc.document("limits", deny_reasons, set(), {"amount within limit"}, 1, ["P10-proportional-risk"])
"""
TIGHTER = LIMIT.replace("input.amount > 100", "input.amount > 50").replace("above 100", "above 50")

JUDGE = """package judge

import data.groqpolicy.lib.decision as doc
import data.groqpolicy.lib.groq

answer := groq.judge_for("ethical_constraints", "fast", "Is this text harmful?", {"text": input.text})

d contains groq.summary(answer) if {
	groq.confident(answer, 0.7)
	answer.decision == "deny"
}

r contains groq.doubt(answer, 0.7) if not groq.confident(answer, 0.7)

a contains groq.summary(answer) if {
	groq.confident(answer, 0.7)
	answer.decision == "allow"
}

decision := doc.document("ethics", d, r, a, answer.confidence, ["P7-safety-harm-avoidance"])
"""

# amounts: 10 within both limits, 5 between 50 and 100 (the tighter rule denies them), 3 above 100
AMOUNTS = [10 + i for i in range(10)] + [60 + i for i in range(5)] + [200 + i for i in range(3)]
# every third text carries one of the emulator's deny markers
TEXTS = [f"note {i}: " + ("please run rm -rf on it" if i % 3 == 0 else "a friendly reminder") for i in range(len(AMOUNTS))]


def policy(name: str, kind: str, text: str, **kw) -> dict:
    body = {"name": name, "policy_type": kind, "opa_policy": text, "performance_tier": "fast",
            "constitutional_hash": CONSTITUTIONAL_HASH, "constitutional_principles": ["P10-proportional-risk"]}
    body.update(kw)
    return body


def context(i: int) -> dict:
    return {"principal": {"id": f"svc-{i}"}, "amount": AMOUNTS[i], "text": TEXTS[i], "email": f"user{i}@example.com"}


@pytest.fixture(scope="module")
def system(tmp_path_factory, nats_server_module, emu_module):
    tmp = tmp_path_factory.mktemp("impact")
    url = nats_server_module.extra["url"]
    worker = spawn_worker(url, emu_module.url, tmp / "worker.log")
    try:
        asyncio.run(wait_for_workers(url, 1))
        settings = make_settings(tmp / "state", nats_url=url, shadow_max_divergence=0.05)
        with pytest.MonkeyPatch.context() as env:
            # the control plane reaches the emulator's Batch API as the worker reaches its chat API
            env.delenv("GROQ_API_KEY", raising=False)
            env.setenv("GROQPOLICY_EMULATOR_URL", emu_module.url)
            env.setenv("GROQPOLICY_BATCH_POLL_S", "0.05")
            built = Services.build(settings)
        with running_control_plane(settings, built) as services:
            with httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=60) as client:
                limit = client.post("/api/v1/policies", json=policy("limits", "risk_management", LIMIT))
                judge = client.post("/api/v1/policies", json=policy("judge", "ethical_constraints", JUDGE))
                assert limit.status_code == 201, limit.text
                assert judge.status_code == 201, judge.text
                yield client, services, emu_module, limit.json()["rule_id"], judge.json()["rule_id"]
    finally:
        worker.kill()
        worker.wait()


@pytest.fixture(scope="module")
def recorded(system):
    """Every context decided once: the first half one by one, the rest as one batch; all recorded."""
    client, services, *_ = system
    half = len(AMOUNTS) // 2
    decisions = {}
    for i in range(half):
        r = client.post("/api/v1/evaluate", headers=bearer(EVALUATE_TOKEN), json={
            "input_context": context(i), "constitutional_hash": CONSTITUTIONAL_HASH, "performance_tier": "fast"})
        assert r.status_code == 200, r.text
        decisions[i] = r.json()["decision"]
    r = client.post("/api/v1/evaluate/batch", headers=bearer(EVALUATE_TOKEN), json={
        "batch_contexts": [context(i) for i in range(half, len(AMOUNTS))], "performance_tier": "fast"})
    assert r.status_code == 200, r.text
    for i, result in enumerate(r.json()["results"], start=half):
        decisions[i] = result["decision"]
    deadline = time.monotonic() + 20
    while services.replay.published < len(AMOUNTS) + 1:  # the decisions and at least one judgment
        assert time.monotonic() < deadline, "the replay store did not publish"
        time.sleep(0.05)
    return decisions


def impact(client: httpx.Client, candidate: dict, **kw) -> dict:
    r = client.post("/api/v1/impact", json={"candidate": candidate, "count": len(AMOUNTS), **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_an_unchanged_policy_changes_nothing_and_asks_no_model(system, recorded):
    client, _, emu, limit, _ = system
    before = emu.calls()
    report = impact(client, {"rule_id": limit, "opa_policy": LIMIT})
    assert (report["decisions"], report["changed"]) == (len(AMOUNTS), 0)
    assert report["model_calls"]["new"] == 0 and report["model_calls"]["recorded"] > 0
    assert emu.calls() == before
    assert all(before_ == after for before_, row in report["matrix"]["*"].items() for after in row)
    records = [r["record"] for r in client.get("/api/v1/audit", params={"source": "admin", "limit": 100}).json()["records"]]
    assert ("impact", "other") in [(r["details"]["action"], r["decision"]) for r in records]  # an analysis is audited


def test_a_tightened_rule_moves_exactly_the_affected_decisions(system, recorded):
    client, _, emu, limit, _ = system
    before = emu.calls()
    report = impact(client, {"rule_id": limit, "opa_policy": TIGHTER})
    risk = report["matrix"]["risk_management"]
    assert risk == {"allow": {"allow": 10, "deny": 5}, "deny": {"deny": 3}}
    # the whole decision changes where the model had not denied already
    moved = [i for i in range(len(AMOUNTS)) if 50 < AMOUNTS[i] <= 100 and recorded[i] != "deny"]
    assert report["changed"] == len(moved) > 0
    assert report["model_calls"]["new"] == 0 and emu.calls() == before
    (example,) = [e for e in report["examples"] if e["policy_type"] == "risk_management"]
    assert (example["before"], example["after"], example["count"]) == ("allow", "deny", 5)
    assert all(ex["text"] == "[redacted]" and ex["email"] == "[redacted]" for ex in example["inputs"])
    assert {ex["amount"] for ex in example["inputs"]} <= {60, 61, 62, 63, 64}


def test_a_changed_prompt_asks_exactly_the_changed_judgments_again(system, recorded):
    client, _, emu, _, judge = system
    before = emu.calls()
    changed = JUDGE.replace("Is this text harmful?", "Is this text harmful or offensive?")
    report = impact(client, {"rule_id": judge, "opa_policy": changed})
    assert report["model_calls"]["new"] == len(set(TEXTS))  # one per distinct question, none recorded
    assert emu.calls() - before == len(set(TEXTS))
    assert report["model_calls"]["recorded"] == 0
    assert report["changed"] == 0  # the emulator judges the text, not the wording of the question


def test_replay_helpers_give_the_same_reports(system, recorded, monkeypatch):
    """The service's replay split with a helper process (forced: two decisions a chunk, from the first
    decision): the tightened rule moves the same cells; a changed prompt's judgments are asked once
    each, by the process asked, which also decides every chunk that needs one."""
    client, services, emu, limit, judge = system
    monkeypatch.setattr(services.impact.settings, "replay_helpers", 1)
    monkeypatch.setattr(services.impact.settings, "replay_helpers_from", 1)
    monkeypatch.setattr(replay, "CHUNK", 2)
    before = emu.calls()
    report = impact(client, {"rule_id": limit, "opa_policy": TIGHTER})
    assert report["matrix"]["risk_management"] == {"allow": {"allow": 10, "deny": 5}, "deny": {"deny": 3}}
    assert 0 < report["helper_decisions"] < len(AMOUNTS)  # both processes decided a share
    assert f"{report['helper_decisions']} of them by helper processes" in render_report(report)  # the CLI says so
    assert report["model_calls"]["new"] == 0 and emu.calls() == before
    changed = JUDGE.replace("Is this text harmful?", "Is this text harmful to anyone?")
    report = impact(client, {"rule_id": judge, "opa_policy": changed})
    assert report["model_calls"]["new"] == len(set(TEXTS)) == emu.calls() - before
    assert report["helper_decisions"] == 0 and report["changed"] == 0
    # a client may ask for fewer helpers (none: this process alone), never more than configured
    assert impact(client, {"rule_id": limit, "opa_policy": TIGHTER}, helpers=0)["helper_decisions"] == 0
    assert impact(client, {"rule_id": limit, "opa_policy": TIGHTER}, helpers=64)["helper_decisions"] > 0
    r = client.post("/api/v1/impact", json={"candidate": {"rule_id": limit, "opa_policy": TIGHTER}, "count": 5, "helpers": -1})
    assert r.status_code == 400 and "helpers" in r.text


def test_a_changed_prompt_via_batch_asks_exactly_the_changed_judgments_at_the_batch_price(system, recorded):
    client, _, emu, limit, judge = system
    changed = JUDGE.replace("Is this text harmful?", "Is this text harmful to anyone?")
    calls, lines = emu.calls(), emu.app.stats["batch_lines"]
    report = impact(client, {"rule_id": judge, "opa_policy": changed}, via="batch")
    asked = len(set(TEXTS))
    assert emu.app.stats["batch_lines"] - lines == asked  # every changed judgment, once, as a batch line
    assert emu.calls() - calls == asked  # and not one direct chat call beside them
    mc = report["model_calls"]
    assert (mc["via"], mc["new"], mc["failed"], len(mc["batches"])) == ("batch", asked, 0, 1)  # one tier, one job
    batch, output = asyncio.run(_batch_and_output(emu, mc["batches"][0]))
    assert (batch.status, batch.request_counts.total, batch.request_counts.completed) == ("completed", asked, asked)
    catalog = default_catalog()
    assert 0 < catalog.batch_discount < 1
    usage = [(row["response"]["body"]["model"], row["response"]["body"]["usage"]) for row in output]
    at_list_price = sum(catalog.models[m].cost_usd(u["prompt_tokens"], u["completion_tokens"]) for m, u in usage)
    assert at_list_price > 0 and mc["cost_usd"] == pytest.approx(at_list_price * catalog.batch_discount, abs=1e-9 * asked)  # each rounded to 1e-9
    assert report["latency"]["new_call_ms_p50"] > 0  # the job's wall time, not the second pass's memory reads
    assert report["changed"] == 0  # the batch's answers were used: the emulator judges the text, not the question
    # a candidate that asks nothing new submits no batch at all
    lines = emu.app.stats["batch_lines"]
    tightened = impact(client, {"rule_id": limit, "opa_policy": TIGHTER}, via="batch")
    assert tightened["model_calls"]["batches"] == [] and emu.app.stats["batch_lines"] == lines
    assert tightened["matrix"]["risk_management"] == {"allow": {"allow": 10, "deny": 5}, "deny": {"deny": 3}}


async def _batch_and_output(emu, batch_id: str) -> tuple:
    """The batch job as the SDK retrieves it, and its output file's rows."""
    client = emu.client()
    try:
        batch = await client.batches.retrieve(batch_id)
        content = await (await client.files.content(batch.output_file_id)).read()
        return batch, [json.loads(line) for line in content.splitlines() if line.strip()]
    finally:
        await client.close()


def test_the_api_streams_progress_and_refuses_what_it_cannot_do(system, recorded):
    client, *_ , limit, _ = system
    with client.stream("POST", "/api/v1/impact", headers={"Accept": "application/x-ndjson"},
                       json={"candidate": {"rule_id": limit, "opa_policy": TIGHTER}, "since_s": 3600}) as r:
        lines = [httpx.Response(200, content=line).json() for line in r.iter_lines() if line]
    assert lines[0] == {"progress": {"done": 0, "total": len(AMOUNTS)}}
    assert lines[-1]["report"]["decisions"] == len(AMOUNTS)
    r = client.post("/api/v1/impact", json={"candidate": {"rule_id": limit, "opa_policy": TIGHTER}})
    assert r.status_code == 400 and "since_s" in r.json()["error"]["message"]
    r = client.post("/api/v1/impact", json={"candidate": {"rule_id": limit, "opa_policy": "package x\n"}, "count": 3})
    assert r.status_code == 422
    r = client.post("/api/v1/impact", json={"candidate": {"rule_id": limit, "opa_policy": TIGHTER}, "count": 3, "via": "mail"})
    assert r.status_code == 400 and "via" in r.text
    r = client.post("/api/v1/impact", headers=bearer(EVALUATE_TOKEN), json={"candidate": {}, "count": 1})
    assert r.status_code == 403


def test_shadow_records_divergences_and_promotion_above_the_threshold_is_refused(system, recorded):
    client, _, _, limit, _ = system
    r = client.post("/api/v1/shadows", json={"candidate": {"rule_id": limit, "opa_policy": TIGHTER}, "sample": 1.0})
    assert r.status_code == 201, r.text
    for i in range(len(AMOUNTS)):
        client.post("/api/v1/evaluate", headers=bearer(EVALUATE_TOKEN), json={
            "input_context": context(i), "constitutional_hash": CONSTITUTIONAL_HASH, "performance_tier": "fast",
            "policy_types": ["risk_management"]})
    deadline = time.monotonic() + 20
    while (shadow := client.get("/api/v1/shadows").json()[0])["compared"] < len(AMOUNTS):
        assert time.monotonic() < deadline, shadow
        time.sleep(0.05)
    assert (shadow["diverged"], shadow["errors"]) == (5, 0)
    assert {(d["live"], d["shadow"]) for d in shadow["divergences"]} == {("allow", "deny")}
    assert 'groqpolicy_shadow_divergence_ratio{policy="' + limit + '"}' in client.get("/metrics").text
    deadline = time.monotonic() + 20
    while len(kept := client.get(f"/api/v1/shadows/{limit}/divergences").json()) < 5:  # the replay store keeps them all
        assert time.monotonic() < deadline, kept
        time.sleep(0.05)
    assert {(d["live"], d["shadow"], len(d["input_sha256"])) for d in kept} == {("allow", "deny", 64)}
    refused = client.post(f"/api/v1/shadows/{limit}/promote")
    assert refused.status_code == 409 and "above" in refused.json()["error"]["message"]
    forced = client.post(f"/api/v1/shadows/{limit}/promote", json={"force": True})
    assert forced.status_code == 200 and forced.json()["forced"] is True
    assert client.get(f"/api/v1/policies/{limit}").json()["opa_policy"] == TIGHTER
    assert client.get("/api/v1/shadows").json() == []
    records = [r["record"] for r in client.get("/api/v1/audit", params={"source": "admin", "limit": 100}).json()["records"]]
    actions = [(r["details"]["action"], r["decision"], r["details"].get("forced")) for r in records]
    assert ("shadow", "other", None) in actions
    assert ("promote", "deny", False) in actions and ("promote", "allow", True) in actions


def test_discard_is_audited_and_an_unknown_shadow_is_404(system, recorded):
    client, _, _, limit, _ = system
    assert client.post("/api/v1/shadows", json={"candidate": {"rule_id": limit, "opa_policy": LIMIT}}).status_code == 201
    assert client.post(f"/api/v1/shadows/{limit}/discard").status_code == 200
    assert client.post(f"/api/v1/shadows/{limit}/discard").status_code == 404
    r = client.post("/api/v1/shadows", json={"candidate": {"opa_policy": LIMIT}})
    assert r.status_code == 400


def test_the_cli_shows_progress_and_the_matrix(system, recorded, tmp_path, capsys):
    from controlplane.ops.cli import main
    from tests.controlplane_helpers import ADMIN_TOKEN

    client, _, _, limit, judge = system
    changed = tmp_path / "limits.rego"
    changed.write_text(TIGHTER.replace("input.amount > 50", "input.amount > 205"))
    common = ["--url", str(client.base_url), "--token", ADMIN_TOKEN]
    assert main(["impact", "--rule-id", limit, "--file", str(changed), "--since", "1h", *common]) == 0
    out, err = capsys.readouterr()
    done, total = re.findall(r"(\d+)/(\d+) contexts", err)[-1]  # the progress bar's last state
    assert done == total and int(total) >= len(AMOUNTS)
    assert "risk_management:" in out and "deny ->" in out and "0 asked anew" in out
    assert main(["impact", "--rule-id", limit, "--file", str(changed), *common]) == 1
    assert "--since" in capsys.readouterr().err
    judge_changed = tmp_path / "judge.rego"
    judge_changed.write_text(JUDGE.replace("Is this text harmful?", "Would this text harm a reader?"))
    assert main(["impact", "--rule-id", judge, "--file", str(judge_changed), "--since", "1h",  # the first decisions too:
                 "--via", "batch", *common]) == 0  # the newest are the shadow's, which ask no model
    out, err = capsys.readouterr()
    assert re.search(r"batch batch_\w+: completed +18/18 judgments answered \(0 failed\)", err), err
    assert "pass 2, with the batch's answers" in err
    assert f"{len(set(TEXTS))} asked anew (batch, 0 failed)" in out and "at the batch price" in out
    assert "batch jobs: batch_" in out
    assert main(["shadow", "list", *common]) == 0


def test_the_dashboard_shows_the_matrix_and_the_shadows(system, recorded):
    client, _, _, limit, judge = system
    changed = JUDGE.replace("Is this text harmful?", "Is this text harmful (asked for the dashboard)?")
    r = client.post("/api/v1/impact", json={"candidate": {"rule_id": judge, "opa_policy": changed}, "since_s": 3600,
                                            "via": "batch"})
    assert r.status_code == 200, r.text
    batches = r.json()["model_calls"]["batches"]
    assert batches
    html = client.get("/dashboard/impact").text
    assert f'data-via="batch" data-batches="{" ".join(batches)}"' in html
    assert all(f'<code class="batch-id">{b}</code>' in html for b in batches)
    impact(client, {"rule_id": limit, "opa_policy": LIMIT.replace("input.amount > 100", "input.amount > 15")})
    assert client.post("/api/v1/shadows", json={"candidate": {"rule_id": limit, "opa_policy": LIMIT}}).status_code == 201
    try:
        page = client.get("/dashboard/impact")
        assert page.status_code == 200
        html = page.text
        assert 'data-policy-type="risk_management"' in html and 'id="impact-risk_management-allow"' in html
        assert 'class="changed" data-cell="allow-deny"' in html
        assert f'data-shadow="{limit}"' in html and f'id="shadow-{limit}"' in html
        assert 'data-via="online"' in html and ", ".join(batches) in html  # the earlier report keeps its jobs
        index = client.get("/").text
        assert 'href="/dashboard/impact"' in index
        assert f'data-shadow-of="{limit}" data-rate="0.0"' in index  # the shadow's divergence beside its policy
    finally:
        client.post(f"/api/v1/shadows/{limit}/discard")


def test_a_bundle_directory_and_a_stored_candidate(system, recorded, tmp_path):
    import shutil

    from tests.conftest import REPO_ROOT

    client, _, emu, limit, _ = system
    library = tmp_path / "rego"
    shutil.copytree(REPO_ROOT / "rego", library)
    live = client.get(f"/api/v1/policies/{limit}").json()["opa_policy"]  # promoted above: the recording is older
    before = emu.calls()
    same = impact(client, {"bundle_dir": str(library)})
    assert same["matrix"] == impact(client, {"rule_id": limit, "opa_policy": live})["matrix"]  # the library unchanged
    assert same["model_calls"]["new"] == 0 and emu.calls() == before
    assert client.post("/api/v1/impact", json={"candidate": {"bundle_dir": str(tmp_path / "nope")}, "count": 1}).status_code == 400
    # a stored policy that is not active yet, shadowed in place of the live one, then promoted
    stored = client.post("/api/v1/policies", json=policy("limits-v2", "risk_management", LIMIT, is_active=False))
    assert stored.status_code == 201, stored.text
    candidate = stored.json()["rule_id"]
    r = client.post("/api/v1/shadows", json={"candidate": {"rule_id": limit, "candidate_id": candidate}, "sample": 1.0})
    assert r.status_code == 201, r.text
    promoted = client.post(f"/api/v1/shadows/{limit}/promote", json={"force": True})
    assert promoted.status_code == 200, promoted.text
    assert client.get(f"/api/v1/policies/{candidate}").json()["is_active"] is True
    assert client.get(f"/api/v1/policies/{limit}").json()["is_active"] is False
    again = client.post("/api/v1/impact", json={"candidate": {"candidate_id": candidate}, "count": 1})
    assert again.status_code == 409 and "active already" in again.json()["error"]["message"]


TRIAGE = """package triage

import data.groqpolicy.lib.decision as doc

decision := object.union(doc.document("triage", set(), {"text needs a judgment"}, set(), 1, []), {"needs_model": true})
"""


class InferRequests:
    """Every model request that leaves the control plane, counted on the NATS subjects the inference
    workers answer (the workers coalesce identical requests in flight, so the emulator alone cannot
    tell one request from two)."""

    def __init__(self, url: str) -> None:
        self.url, self.count = url, 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _subscribe(self) -> None:
        self._nc = await nats.connect(self.url)

        async def seen(_msg) -> None:
            self.count += 1

        await self._nc.subscribe("groq.infer.>", cb=seen)
        await self._nc.flush()

    def __enter__(self) -> InferRequests:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._subscribe(), self._loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._nc.flush(), self._loop).result(10)
        asyncio.run_coroutine_threadsafe(self._nc.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def test_the_same_changed_judgment_wanted_at_once_is_asked_once(system, nats_server_module):
    """Last in this module (it records the newest decisions). Identical contexts decided together
    go through the pipeline's model stage concurrently: each wants the same changed judgment at the
    same moment, and one model request must leave for it, not one per decision."""
    client, services, emu, *_ = system
    cfg = {"model_name": "llama-3.1-8b-instant", "performance_tier": "fast", "policy_context": "internal notes"}
    r = client.post("/api/v1/policies", json=policy("triage", "constitutional_compliance", TRIAGE, groq_model_config=cfg))
    assert r.status_code == 201, r.text
    triage = r.json()["rule_id"]
    same = {"principal": {"id": "svc-twin"}, "amount": 1, "text": "a long note that the rules leave to the model"}
    published = services.replay.published
    r = client.post("/api/v1/evaluate/batch", headers=bearer(EVALUATE_TOKEN), json={
        "batch_contexts": [same] * 8, "performance_tier": "fast", "policy_types": ["constitutional_compliance"]})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 20
    while services.replay.published < published + 9:  # the eight decisions and their judgment
        assert time.monotonic() < deadline, "the replay store did not publish"
        time.sleep(0.05)
    before = emu.calls()
    changed = TRIAGE.replace("text needs a judgment", "text needs a second look")  # the model's context changes
    with InferRequests(nats_server_module.extra["url"]) as requests:
        report = impact(client, {"rule_id": triage, "opa_policy": changed}, count=8)
    assert report["decisions"] == 8
    assert (report["model_calls"]["new"], report["model_calls"]["failed"]) == (1, 0)
    assert requests.count == 1
    assert emu.calls() - before == 1


def test_shadows_survive_a_restart_and_an_unrestorable_one_is_reported(system, nats_server_module, tmp_path):
    """A second control plane on the module's NATS, stopped and started again over the same state."""
    from controlplane.impact import shadow_state
    from controlplane.impact.candidate import CandidateSpec
    from tests.controlplane_helpers import ADMIN_HEADERS as admin

    client, services, _, _, judge = system
    # the live risk_management policy (an earlier test promoted a stored candidate in place of `limits`)
    (limit,) = [p["rule_id"] for p in client.get("/api/v1/policies", params={"policy_type": "risk_management"}).json()
                if p["is_active"]]
    url = nats_server_module.extra["url"]
    # a replica of the module's control plane: the same record key (it trusts the stored policies)
    settings = make_settings(tmp_path / "state", nats_url=url,
                             record_key_file=services.settings.state_dir / "record-keys" / "signing.pem")
    stricter = LIMIT.replace("input.amount > 100", "input.amount > 12")

    def evaluate(c: httpx.Client, amounts: range) -> None:
        for amount in amounts:
            r = c.post("/api/v1/evaluate", headers=bearer(EVALUATE_TOKEN), json={
                "input_context": {**context(0), "amount": amount}, "constitutional_hash": CONSTITUTIONAL_HASH,
                "performance_tier": "fast", "policy_types": ["risk_management"]})
            assert r.status_code == 200, r.text

    def compared_at_least(c: httpx.Client, n: int) -> dict:
        deadline = time.monotonic() + 20
        while (found := c.get("/api/v1/shadows").json()) == [] or found[0]["compared"] < n:
            assert time.monotonic() < deadline, found
            time.sleep(0.05)
        return found[0]

    async def save_broken() -> None:  # a shadow saved by an older policy text that no longer compiles
        nc = await nats.connect(url)
        try:
            await shadow_state.ShadowBucket(lambda: nc).save(judge, shadow_state.SavedShadow(
                spec=CandidateSpec(rule_id=judge, opa_policy="package judge\n\ndecision := input.\n"),
                sample=1.0, started_at=time.time()))
        finally:
            await nc.close()

    with running_control_plane(settings):
        with httpx.Client(base_url=settings.base_url, headers=admin, timeout=60) as c:
            r = c.post("/api/v1/shadows", json={"candidate": {"rule_id": limit, "opa_policy": stricter}, "sample": 1.0})
            assert r.status_code == 201, r.text
            evaluate(c, range(20, 25))  # the candidate denies what the live rule (above 50) allows
            first = compared_at_least(c, 5)
    asyncio.run(save_broken())
    with running_control_plane(settings):  # the same settings, a new process' worth of services
        with httpx.Client(base_url=settings.base_url, headers=admin, timeout=60) as c:
            (restored,) = c.get("/api/v1/shadows").json()
            assert (restored["rule_id"], restored["candidate_revision"]) == (limit, first["candidate_revision"])
            assert (restored["compared"], restored["diverged"], restored["sample"]) == (5, 5, 1.0)
            unrestored = c.get("/api/v1/shadows/unrestored").json()
            assert list(unrestored) == [judge] and "422" not in unrestored[judge] and unrestored[judge]
            evaluate(c, range(20, 23))
            again = compared_at_least(c, 8)
            assert again["diverged"] == 8  # it still compares, and goes on from the saved counters
            assert c.post(f"/api/v1/shadows/{judge}/discard").status_code == 200
            assert c.post(f"/api/v1/shadows/{limit}/discard").status_code == 200
            assert c.get("/api/v1/shadows/unrestored").json() == {}
    with running_control_plane(settings):
        with httpx.Client(base_url=settings.base_url, headers=admin, timeout=60) as c:
            assert c.get("/api/v1/shadows").json() == [] and c.get("/api/v1/shadows/unrestored").json() == {}
