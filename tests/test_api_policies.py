"""`/api/v1/policies` through real HTTP: create, list with filters, get, update, delete, compile,
and every error path (bad hash, bad Rego, unknown policy, malformed JSON, oversized body)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import nats.errors
import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from tests.controlplane_helpers import ADMIN_HEADERS, make_settings, running_control_plane

LIMIT = """package limits

import data.groqpolicy.lib.decision as doc

deny_reasons contains "amount above 100" if input.amount > 100

decision := doc.document("limits", deny_reasons, set(), {"amount within limit"}, 1, ["P10-proportional-risk"])
"""


def policy(**kw) -> dict:
    body = {"name": "limits", "policy_type": "risk_management", "opa_policy": LIMIT, "performance_tier": "nano",
            "constitutional_hash": CONSTITUTIONAL_HASH, "constitutional_principles": ["P10-proportional-risk"]}
    body.update(kw)
    return body


@pytest.fixture(scope="module")
def cp(tmp_path_factory, nats_server_module):
    settings = make_settings(tmp_path_factory.mktemp("cp") / "state", compile_on_start=True,
                             nats_url=nats_server_module.extra["url"])
    with running_control_plane(settings) as services:
        with httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
            yield client, services


def test_create_get_list_update_delete(cp):
    client, services = cp
    r = client.post("/api/v1/policies", json=policy())
    assert r.status_code == 201, r.text
    created = r.json()
    rule_id = created["rule_id"]
    hexid = uuid.UUID(rule_id).hex
    assert created["wasm_compilation_status"] == "success" and created["version"] == 1
    assert created["entrypoint"] == f"groqpolicy/rules/p_{hexid}/decision"
    assert created["constitutional_hash"] == CONSTITUTIONAL_HASH
    # the new revision is active for agents and loaded by the in-process evaluator
    assert services.store.get("groqpolicy", "rego")[0].revision == created["bundle_revision"]
    assert services.runtime.evaluator.revision == created["bundle_revision"]
    # the signed archives of that revision are kept in the object store, byte for byte what is served
    for target in ("rego", "wasm"):
        stored = asyncio.run_coroutine_threadsafe(
            services.policies.store.get_artifact(f"bundles/{created['bundle_revision']}/{target}.tar.gz"), services.runtime.loop).result(10)
        assert stored == services.store.get("groqpolicy", target)[1]

    got = client.get(f"/api/v1/policies/{rule_id}").json()
    assert (got["name"], got["policy_type"], got["performance_tier"], got["is_active"]) == ("limits", "risk_management", "nano", True)
    assert got["opa_policy"] == LIMIT and got["constitutional_hash"] == CONSTITUTIONAL_HASH
    assert got["package"] == f"groqpolicy.rules.p_{hexid}"

    other = client.post("/api/v1/policies", json=policy(name="other", policy_type="security_policies", performance_tier="fast")).json()
    ids = lambda q: {p["rule_id"] for p in client.get("/api/v1/policies", params=q).json()}  # noqa: E731
    assert {rule_id, other["rule_id"]} <= ids({})
    assert rule_id in ids({"policy_type": "risk_management"}) and other["rule_id"] not in ids({"policy_type": "risk_management"})
    assert other["rule_id"] in ids({"performance_tier": "fast"}) and rule_id not in ids({"performance_tier": "fast"})

    r = client.put(f"/api/v1/policies/{rule_id}", json={"constitutional_hash": CONSTITUTIONAL_HASH, "is_active": False, "priority": 5})
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["is_active"], r.json()["priority"], r.json()["name"]) == (2, False, 5, "limits")
    assert rule_id in ids({"is_active": "false"}) and rule_id not in ids({"is_active": "true"})
    # asked repeatedly: the versions were once read through a watch whose end marker could overtake
    # the entries, so a read now and then answered none
    for _ in range(20):
        versions = client.get(f"/api/v1/policies/{rule_id}/versions").json()
        assert [v["version"] for v in versions] == [1, 2]

    r = client.delete(f"/api/v1/policies/{other['rule_id']}", params={"constitutional_hash": "0" * 16})
    assert r.status_code == 422 and r.json()["error"]["type"] == "ConstitutionalHashMismatch"
    r = client.delete(f"/api/v1/policies/{other['rule_id']}", params={"constitutional_hash": CONSTITUTIONAL_HASH})
    assert r.status_code == 200 and r.json()["rule_id"] == other["rule_id"]
    r = client.get(f"/api/v1/policies/{other['rule_id']}")
    assert r.status_code == 404
    assert r.json() == {"error": {"type": "PolicyNotFound", "message": f"policy {other['rule_id']}: not found"}}


def test_the_stored_set_is_one_list_until_a_write_changes_it(cp):
    """The store and the policy service hand out the same list until the set changes (the pipeline
    keeps its choice of applicable policies per list); a write gives new lists at once."""
    client, services = cp
    store, service = services.policies.store, services.policies
    before, active = store.records(), service.active_records()
    assert store.records() is before and service.active_records() is active
    rule_id = client.post("/api/v1/policies", json=policy(name="listed")).json()["rule_id"]
    assert store.records() is not before and service.active_records() is not active
    assert rule_id in {str(r.rule_id) for r in service.active_records()}
    r = client.put(f"/api/v1/policies/{rule_id}", json={"constitutional_hash": CONSTITUTIONAL_HASH, "is_active": False})
    assert r.status_code == 200, r.text
    assert rule_id in {str(r.rule_id) for r in store.records()} and rule_id not in {str(r.rule_id) for r in service.active_records()}


def test_update_changes_the_rego_and_the_evaluator_follows(cp):
    client, _ = cp
    rule_id = client.post("/api/v1/policies", json=policy(name="swap")).json()["rule_id"]
    ask = {"policy_id": rule_id, "input_data": {"amount": 50}}
    assert client.post("/api/v1/opa/evaluate", json=ask).json()["result"]["decision"] == "allow"
    stricter = LIMIT.replace("input.amount > 100", "input.amount > 10")
    r = client.put(f"/api/v1/policies/{rule_id}", json={"constitutional_hash": CONSTITUTIONAL_HASH, "opa_policy": stricter})
    assert r.status_code == 200 and r.json()["version"] == 2
    out = client.post("/api/v1/opa/evaluate", json=ask).json()
    assert out["result"]["decision"] == "deny" and out["policy_version"].startswith("v2@groqpolicy-")


def test_a_write_s_revision_serves_at_its_response_and_then_on_the_serving_compiler_s_code(cp):
    """The write's response does not wait for the serving compile: the evaluator already answers on
    the new revision (Winch's code, /health says "baseline", unless the compile was quick enough to
    be done), and the serving compile replaces it with the same revision and the same answers."""
    client, services = cp
    created = client.post("/api/v1/policies", json=policy(name="baseline first")).json()
    ask = {"policy_id": created["rule_id"], "input_data": {"amount": 50}}
    assert client.post("/api/v1/opa/evaluate", json=ask).json()["result"]["decision"] == "allow"
    health = client.get("/health").json()["evaluator"]
    assert health["revision"] == created["bundle_revision"] and health["code"] in ("baseline", "optimized")
    assert services.runtime.evaluator.settle(120)
    assert client.get("/health").json()["evaluator"] == {"revision": created["bundle_revision"], "code": "optimized"}
    assert client.post("/api/v1/opa/evaluate", json=ask).json()["result"]["decision"] == "allow"
    metrics = {line.split(" ")[0]: float(line.split(" ")[1]) for line in client.get("/metrics").text.splitlines()
               if line.startswith("groqpolicy_evaluator_baseline")}
    assert metrics["groqpolicy_evaluator_baseline_code"] == 0  # the serving compile ended
    # every write so far was served on the baseline code first, for as long as its compile took
    assert metrics["groqpolicy_evaluator_baseline_loads_total"] >= 1
    assert metrics["groqpolicy_evaluator_baseline_seconds_total"] > 0


class AckLost:
    """The real policy bucket; the next create/update is stored by the server (or, with
    `store=False`, not) and its acknowledgement never arrives."""

    def __init__(self, kv) -> None:
        self.kv, self.lose, self.store = kv, False, True

    def __getattr__(self, name):
        return getattr(self.kv, name)

    async def _lost(self, write):
        if not self.lose:
            return await write()
        self.lose = False
        if self.store:
            await write()
        raise nats.errors.TimeoutError

    async def create(self, key, value):
        return await self._lost(lambda: self.kv.create(key, value))

    async def update(self, key, value, last=None):
        return await self._lost(lambda: self.kv.update(key, value, last=last))


class LossyJetStream:
    """JetStream whose publishes (the store's signed delete markers) go through an `AckLost`."""

    def __init__(self, lossy: AckLost, js) -> None:
        self.lossy, self.js = lossy, js

    def __getattr__(self, name):
        return getattr(self.js, name)

    async def publish(self, *args, **kwargs):
        return await self.lossy._lost(lambda: self.js.publish(*args, **kwargs))


def test_a_write_stored_without_its_acknowledgement_is_answered_as_stored(cp):
    """A create, update or delete the server stored but whose acknowledgement was lost is the
    client's 201/200 (one policy, served; then none), not a 503 that a retry would turn into a second policy; one
    that was not stored stays a 503 and leaves nothing behind."""
    client, services = cp
    store = services.runtime.policies.store
    lossy, jetstream = AckLost(store.kv), store.jetstream
    store.kv, store.jetstream = lossy, lambda: LossyJetStream(lossy, jetstream())
    try:
        lossy.lose = True
        r = client.post("/api/v1/policies", json=policy(name="ack lost"))
        assert r.status_code == 201, r.text
        rule_id = r.json()["rule_id"]
        assert [p["rule_id"] for p in client.get("/api/v1/policies").json() if p["name"] == "ack lost"] == [rule_id]
        ask = {"policy_id": rule_id, "input_data": {"amount": 50}}
        assert client.post("/api/v1/opa/evaluate", json=ask).json()["result"]["decision"] == "allow"
        lossy.lose = True
        stricter = LIMIT.replace("input.amount > 100", "input.amount > 10")
        r = client.put(f"/api/v1/policies/{rule_id}", json={"constitutional_hash": CONSTITUTIONAL_HASH, "opa_policy": stricter})
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
        assert client.post("/api/v1/opa/evaluate", json=ask).json()["result"]["decision"] == "deny"
        lossy.lose = True
        assert client.delete(f"/api/v1/policies/{rule_id}").status_code == 200
        assert client.get(f"/api/v1/policies/{rule_id}").status_code == 404
        lossy.lose, lossy.store = True, False
        r = client.post("/api/v1/policies", json=policy(name="never stored"))
        assert r.status_code == 503 and "does not hold this write" in r.text, r.text
        assert not [p for p in client.get("/api/v1/policies").json() if p["name"] == "never stored"]
    finally:
        store.kv, store.jetstream = lossy.kv, jetstream


def test_bad_rego_is_refused_with_the_compilers_messages_and_not_stored(cp):
    client, _ = cp
    before = len(client.get("/api/v1/policies").json())
    bad = "package broken\n\nimport rego.v1\n\ndecision := missing_var\n"
    r = client.post("/api/v1/policies", json=policy(opa_policy=bad))
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["type"] == "CompileError" and err["stage"] == "check"
    assert err["message"] == "opa check failed: opa_policy:5:13: rego_unsafe_var_error: var missing_var is unsafe"
    assert err["messages"] == [{"stage": "check", "message": "var missing_var is unsafe", "code": "rego_unsafe_var_error",
                                "file": "opa_policy", "row": 5, "col": 13}]
    r = client.post("/api/v1/policies", json=policy(opa_policy="package p\n\ndecision := true if {\n"))
    assert r.status_code == 422 and r.json()["error"]["messages"][0]["code"] == "rego_parse_error"
    assert r.json()["error"]["messages"][0]["file"] == "opa_policy"
    r = client.post("/api/v1/policies", json=policy(opa_policy="package p\n\nallow := true\n"))
    assert r.status_code == 422
    assert r.json()["error"]["message"] == (
        "opa check failed: opa_policy:1:1: rego_type_error: the policy must define a `decision` rule (the decision document)")
    r = client.post("/api/v1/policies", json=policy(opa_policy="decision := 1\n"))
    assert r.status_code == 422
    assert r.json()["error"]["message"] == (
        "opa check failed: opa_policy:1:1: rego_parse_error: package expected (a Rego module starts with `package <name>`)")
    # an inactive policy is checked just the same
    r = client.post("/api/v1/policies", json=policy(opa_policy=bad, is_active=False))
    assert r.status_code == 422
    assert len(client.get("/api/v1/policies").json()) == before


@pytest.mark.parametrize("text,messages", [
    ("package p\n\ngroqpolicy_decision := 1\n\ndecision := {\"decision\": \"allow\"}\n",
     [("rego_reserved_name", 3, 1, "groqpolicy_decision: reserved name")]),
    ("package p\n\n  groqpolicy_decisions contains 1\ndecision := 1\ngroqpolicy_x(a) := a\n",
     [("rego_reserved_name", 3, 3, "groqpolicy_decisions: reserved name"), ("rego_reserved_name", 5, 1, "groqpolicy_x: reserved name")]),
    ("package p\n\nimport data.groqpolicy.lib.decision as groqpolicy_doc\n\ndecision := groqpolicy_doc.x\n",
     [("rego_reserved_name", 3, 40, "groqpolicy_doc: reserved name")]),
])
def test_reserved_names_are_refused_at_create_naming_the_name(cp, text, messages):
    client, _ = cp
    before = len(client.get("/api/v1/policies").json())
    r = client.post("/api/v1/policies", json=policy(opa_policy=text))
    assert r.status_code == 422, r.text
    got = [(m["code"], m["row"], m["col"], m["message"].split(" (")[0]) for m in r.json()["error"]["messages"]]
    assert got == messages
    assert r.json()["error"]["messages"][0]["file"] == "opa_policy"
    assert messages[0][3].split(":")[0] in r.json()["error"]["message"]
    assert len(client.get("/api/v1/policies").json()) == before
    # a change that brings a reserved name in is refused the same way, and the stored version stays
    created = client.post("/api/v1/policies", json=policy()).json()
    r = client.put(f"/api/v1/policies/{created['rule_id']}", json={"constitutional_hash": CONSTITUTIONAL_HASH, "opa_policy": text})
    assert r.status_code == 422 and [m["code"] for m in r.json()["error"]["messages"]] == ["rego_reserved_name"] * len(messages)
    assert client.get(f"/api/v1/policies/{created['rule_id']}").json()["version"] == 1
    client.delete(f"/api/v1/policies/{created['rule_id']}", params={"constitutional_hash": CONSTITUTIONAL_HASH})


def test_parse_and_type_errors_point_at_the_users_own_text(cp):
    client, _ = cp
    # a 4-line policy with an unclosed object: the parser runs out of input after the user's last line
    unclosed = 'package p\n\ndecision := {"decision": "allow",\n  "reasons": [],\n'
    r = client.post("/api/v1/policies", json=policy(opa_policy=unclosed))
    assert r.status_code == 422
    first = r.json()["error"]["messages"][0]
    assert (first["code"], first["file"], first["row"], first["col"]) == ("rego_parse_error", "opa_policy", 4, 16)
    assert "groqpolicy" not in r.json()["error"]["message"]
    # a decision written as a function: the generated entrypoint cannot read it; the finding is at the user's rule
    func = "package p\n\nimport rego.v1\n\ndecision(x) := x\n"
    r = client.post("/api/v1/policies", json=policy(opa_policy=func))
    assert r.status_code == 422
    found = [(m["code"], m["row"], m["col"], m["message"]) for m in r.json()["error"]["messages"]]
    assert ("rego_type_error", 5, 1, "`decision` cannot be the policy's decision document: function decision used as reference, not called") in found
    assert all(m["row"] <= 5 for m in r.json()["error"]["messages"])
    # a type error in the user's own rule keeps its own place
    typed = "package p\n\ndecision := d if {\n  d := count(1)\n}\n"
    r = client.post("/api/v1/policies", json=policy(opa_policy=typed))
    assert r.status_code == 422
    first = r.json()["error"]["messages"][0]
    assert (first["code"], first["row"], first["col"]) == ("rego_type_error", 4, 8)


def test_constitutional_hash_is_checked_on_every_write(cp):
    client, _ = cp
    want = f"constitutional_hash: unknown constitution (want: {CONSTITUTIONAL_HASH}, got: 'deadbeefdeadbeef')"
    r = client.post("/api/v1/policies", json=policy(constitutional_hash="deadbeefdeadbeef"))
    assert r.status_code == 422
    assert r.json() == {"error": {"type": "ConstitutionalHashMismatch", "message": want, "code": "constitutional_hash_mismatch"}}
    rule_id = client.post("/api/v1/policies", json=policy(name="hashcheck")).json()["rule_id"]
    r = client.put(f"/api/v1/policies/{rule_id}", json={"constitutional_hash": "deadbeefdeadbeef", "name": "renamed"})
    assert r.status_code == 422 and r.json()["error"]["message"] == want
    r = client.put(f"/api/v1/policies/{rule_id}", json={"name": "renamed"})
    assert r.status_code == 400
    assert r.json()["error"]["details"] == [{"message": "Object missing required field `constitutional_hash`", "key": "data", "source": "body"}]
    assert client.get(f"/api/v1/policies/{rule_id}").json()["name"] == "hashcheck"


def test_compile_measures_the_module(cp):
    client, _ = cp
    rule_id = client.post("/api/v1/policies", json=policy(name="measured")).json()["rule_id"]
    r = client.post(f"/api/v1/policies/{rule_id}/compile", json={"input": {"amount": 500}, "samples": 50})
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["compilation_status"] == "success" and rep["performance_samples"] == 50
    assert 100_000 < rep["bytecode_size"] < 5_000_000  # the module holds the library too
    assert 0 < rep["performance_estimate"] <= rep["performance_p99_us"] < 100_000
    assert rep["entrypoint"] == f"groqpolicy/rules/p_{uuid.UUID(rule_id).hex}/groqpolicy_decision"
    assert rep["artifact"] == f"policies/{rule_id}/v1/wasm.tar.gz"
    assert client.get(f"/api/v1/policies/{rule_id}").json()["bytecode_size"] == rep["bytecode_size"]
    r = client.post(f"/api/v1/policies/{rule_id}/compile")  # no body: defaults
    assert r.status_code == 200 and r.json()["performance_samples"] == 200
    r = client.post(f"/api/v1/policies/{rule_id}/compile", json={"samples": 0})
    assert r.status_code == 400


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/v1/policies/{id}"), ("PUT", "/api/v1/policies/{id}"), ("DELETE", "/api/v1/policies/{id}"),
    ("POST", "/api/v1/policies/{id}/compile"),
])
def test_unknown_policy_is_404(cp, method, path):
    client, _ = cp
    rid = str(uuid.uuid4())
    body = {"constitutional_hash": CONSTITUTIONAL_HASH} if method == "PUT" else None
    r = client.request(method, path.format(id=rid), json=body)
    assert r.status_code == 404
    assert r.json() == {"error": {"type": "PolicyNotFound", "message": f"policy {rid}: not found"}}
    r = client.request(method, path.format(id="not-a-uuid"), json=body)
    assert r.status_code == 404


def test_malformed_json_unknown_fields_and_oversized_bodies(cp):
    client, _ = cp
    r = client.post("/api/v1/policies", content=b'{"name": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "ClientException"
    assert r.json()["error"]["message"] == "Input data was truncated"
    r = client.post("/api/v1/policies", content=b'{"name" 1}', headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json() == {"error": {"type": "ClientException", "message": "JSON is malformed: expected ':' (byte 8)"}}
    r = client.post("/api/v1/policies", json=policy(surprise=1))
    assert r.status_code == 400
    assert r.json()["error"]["details"] == [{"message": "Object contains unknown field `surprise`", "key": "data", "source": "body"}]
    r = client.post("/api/v1/policies", json=policy(policy_type="astrology"))
    assert r.status_code == 400
    assert "Invalid enum value 'astrology'" in r.json()["error"]["details"][0]["message"]
    r = client.get("/api/v1/policies", params={"policy_type": "astrology"})
    assert r.status_code == 400
    huge = policy(opa_policy=LIMIT + "#" * (1024 * 1024))
    r = client.post("/api/v1/policies", json=huge)
    assert r.status_code == 413
    assert r.json() == {"error": {"type": "RequestEntityTooLarge", "message": "Request Entity Too Large"}}


def test_policies_are_in_the_openapi_schema(cp):
    client, _ = cp
    paths = client.get("/schema/openapi.json").json()["paths"]
    for p in ["/api/v1/policies", "/api/v1/policies/{rule_id}", "/api/v1/policies/{rule_id}/compile", "/api/v1/evaluate",
              "/api/v1/evaluate/batch", "/api/v1/groq/models", "/api/v1/groq/inference", "/api/v1/opa/evaluate"]:
        assert p in paths, sorted(paths)


def test_policy_writes_without_nats_are_503(tmp_path, nats_server):
    settings = make_settings(tmp_path / "state", nats_url=nats_server.extra["url"])
    with running_control_plane(settings) as services:
        with httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
            nats_server.stop()
            r = client.post("/api/v1/policies", json=policy(name="while down"))
            assert r.status_code == 503, r.text
            # refused before anything is stored: its certification could not be recorded
            assert r.json()["error"]["type"] == "AuditUnavailable"
            assert r.json()["error"]["message"].startswith("audit trail: NATS is not connected")
            assert services.policies.store.records() == []


def test_a_policy_this_replica_has_not_loaded_yet_is_503(cp):
    client, services = cp
    rule_id = client.post("/api/v1/policies", json=policy(name="not loaded")).json()["rule_id"]
    runtime, bundler = services.runtime, services.policies.bundler
    older = bundler.compile({})  # the library alone: what a lagging replica still serves
    runtime.evaluator.load(services.publisher.sign(older)["wasm"])
    try:
        r = client.post("/api/v1/opa/evaluate", json={"policy_id": rule_id, "input_data": {"amount": 1}})
        assert r.status_code == 503
        assert r.json()["error"]["message"] == (
            f"policy {rule_id}: not loaded by the in-process evaluator yet (revision {older.revision}); retry")
    finally:
        assert runtime.follower.reload(force=True)
    assert client.post("/api/v1/opa/evaluate", json={"policy_id": rule_id, "input_data": {"amount": 1}}).status_code == 200


def test_a_write_compiles_once_unless_it_switches_a_policy_off_and_changes_its_module(cp, monkeypatch):
    """Each write compiles the bundles it needs and no more: an inactive policy's Rego is checked
    (one compile), and the set without it is compiled only when it is not the active revision
    already; switching a policy off compiles only the set without it (its module is served already)."""
    client, services = cp
    bundler = services.policies.bundler
    compiled: list[set[str]] = []  # the stored policies in each compile
    real = bundler.prepare  # every compile's opa stages (`compile` is `finish(prepare(...))`)

    def counting(modules, focus=None, run_tests=False, parsed=None):
        compiled.append(set(modules))
        return real(modules, focus=focus, run_tests=run_tests, parsed=parsed)

    monkeypatch.setattr(bundler, "prepare", counting)
    served = lambda: services.store.get("groqpolicy", "wasm")[0].revision  # noqa: E731

    def write(method: str, url: str, **body) -> dict:
        compiled.clear()
        r = client.request(method, url, json={"constitutional_hash": CONSTITUTIONAL_HASH, **body})
        assert r.status_code in (200, 201), r.text
        return r.json()

    before = served()
    rule_id = write("POST", "/api/v1/policies", **policy(name="switched", is_active=False))["rule_id"]
    assert compiled == [{rule_id} | {str(r.rule_id) for r in services.policies.active_records()}] and served() == before
    stricter = LIMIT.replace("input.amount > 100", "input.amount > 10")
    write("PUT", f"/api/v1/policies/{rule_id}", opa_policy=stricter)  # still inactive: checked, nothing new served
    assert len(compiled) == 1 and rule_id in compiled[0] and served() == before
    write("PUT", f"/api/v1/policies/{rule_id}", is_active=True)
    assert len(compiled) == 1 and rule_id in compiled[0] and served() != before
    write("PUT", f"/api/v1/policies/{rule_id}", is_active=False, priority=3)  # its module is served: not checked again
    assert len(compiled) == 1 and rule_id not in compiled[0] and served() == before
    write("PUT", f"/api/v1/policies/{rule_id}", is_active=True)
    write("PUT", f"/api/v1/policies/{rule_id}", is_active=False, opa_policy=LIMIT)  # off and changed: two bundles
    assert [rule_id in c for c in compiled] == [True, False] and served() == before
    r = client.post("/api/v1/opa/evaluate", json={"policy_id": rule_id, "input_data": {"amount": 50}})
    assert r.status_code == 409 and r.json()["error"]["type"] == "PolicyInactive"
