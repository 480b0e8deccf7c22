"""Certification through the API, end to end: a real control plane, a real inference worker on the
Groq emulator (the model review), the audit trail on a real nats-server, and a real OPA agent that
shows, in its bundle manifest, the signed certificate of the policy it runs."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import httpx
import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.certification.certificate import verify
from controlplane.infra.processes import start_opa_agent
from tests.conftest import REPO_ROOT
from tests.controlplane_helpers import ADMIN_HEADERS, ADMIN_TOKEN, control_plane_with_worker
from tests.test_certification import FAIL_OPEN, LIMIT, TESTS

pytestmark = pytest.mark.slow

# the emulated model denies text that names a risk marker ("exfiltrate"): a review that denies
SUSPICIOUS = LIMIT + "\n# exports go to a partner bucket: exfiltrate nothing else\n"


def body(text: str = LIMIT, **kw) -> dict:
    return {"name": "limits", "policy_type": "risk_management", "opa_policy": text, "performance_tier": "nano",
            "constitutional_hash": CONSTITUTIONAL_HASH, "constitutional_principles": ["P10-proportional-risk"], **kw}


@pytest.fixture(scope="module")
def system(tmp_path_factory, nats_server_module, emu_module):
    tmp = tmp_path_factory.mktemp("cert")
    with control_plane_with_worker(tmp, nats_server_module.extra["url"], emu_module.url) as (settings, services, _):
        client = httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=60)
        config = client.get("/api/v1/opa/config", params={"agent_id": "cert-agent", "min_delay_s": 1, "max_delay_s": 2}).text
        (tmp / "agent.yaml").write_text(config)
        agent = start_opa_agent(tmp / "agent.yaml", tmp / "opa")
        try:
            yield client, services, httpx.Client(base_url=agent.extra["url"], timeout=30)
        finally:
            agent.stop()
            client.close()


def certification_records(client: httpx.Client, rule_id: str | None = None) -> list[dict]:
    r = client.get("/api/v1/audit", params={"source": "certification", "limit": 200})
    assert r.status_code == 200, r.text
    records = [item["record"] for item in r.json()["records"]]
    return [rec for rec in records if rule_id is None or rec["policy_ids"] == [rule_id]]


def stored_names(client: httpx.Client) -> set[str]:
    return {p["name"] for p in client.get("/api/v1/policies").json()}


@pytest.mark.parametrize(("text", "principles", "want"), [
    (LIMIT, ["P10-proportional-risk", "P42-move-fast"], "principles: principle P42-move-fast is not in the constitution"),
    (FAIL_OPEN, ["P2-fail-closed"], "fail_closed: probe synthetic input: allows when the model call fails"),
], ids=["unknown-principle", "allows-on-failed-model-call"])
def test_a_policy_that_fails_certification_is_refused_with_the_reason_and_audited(system, text, principles, want):
    client, _, _ = system
    name = f"refused-{uuid.uuid4().hex[:8]}"
    r = client.post("/api/v1/policies", json=body(text, name=name, constitutional_principles=principles))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("CertificationRefused", "certification_failed")
    assert error["message"].startswith(f"policy {name!r} is not certified, so it is not activated: ")
    assert want in error["message"]
    assert error["certificate"]["certified"] is False
    assert name not in stored_names(client)
    refused = [rec for rec in certification_records(client) if rec["details"]["certificate"]["policy_name"] == name]
    assert [(rec["decision"], rec["details"]["outcome"]) for rec in refused] == [("deny", "refused")]
    assert any(want in reason for reason in refused[0]["reasons"])


def test_a_model_deny_blocks_activation_until_an_admin_overrides_it(system):
    client, services, _ = system
    review = {"model_review": "premium"}
    r = client.post("/api/v1/policies", json=body(SUSPICIOUS, name="suspicious", certification=review))
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("ReviewDenied", "review_denied")
    assert "the model review (premium, " in error["message"] and "certification.override" in error["message"]
    assert "P10-proportional-risk (high): emulated: matched risk marker 'exfiltrate'" in error["message"]
    assert "suspicious" not in stored_names(client)
    served = services.store.get("groqpolicy", "rego")[0].revision

    r = client.post("/api/v1/policies", json=body(SUSPICIOUS, name="suspicious",
                                                  certification={**review, "override": "partner export reviewed by security"}))
    assert r.status_code == 201, r.text
    rule_id = r.json()["rule_id"]
    assert services.store.get("groqpolicy", "rego")[0].revision != served  # now it is served
    cert = client.get(f"/api/v1/policies/{rule_id}").json()["certificate"]
    assert cert["review"]["decision"] == "deny" and cert["review"]["tier"] == "premium"
    # the findings are the model's structured answer (strict JSON schema), stored and signed as such
    (finding,) = cert["review"]["findings"]
    assert (finding["principle"], finding["severity"]) == ("P10-proportional-risk", "high")
    assert "matched risk marker 'exfiltrate'" in finding["text"] and cert["version"] == 2
    assert cert["override"]["reason"] == "partner export reviewed by security" and cert["override"]["by"] == "admin"
    assert verify(cert, services.policies.certifier.keys) == ""
    # both recorded: the deny that blocked it, and the override that activated it
    outcomes = [rec["details"]["outcome"] for rec in certification_records(client)
                if rec["details"]["certificate"]["policy_name"] == "suspicious"]
    assert sorted(outcomes) == ["denied", "overridden"]

    # a later write of the same text keeps the verdict and its override (they were about this text)
    r = client.put(f"/api/v1/policies/{rule_id}", json={"constitutional_hash": CONSTITUTIONAL_HASH, "priority": 4})
    assert r.status_code == 200, r.text
    later = r.json()["certificate"]
    assert later["policy_version"] == 2 and later["override"] == cert["override"] and later["review"] == cert["review"]


def test_the_certificate_verifies_and_reaches_the_agents_manifest(system):
    client, services, opa = system
    r = client.post("/api/v1/policies", json=body(name="certified", opa_tests=TESTS,
                                                  certification={"model_review": "reasoning"}))
    assert r.status_code == 201, r.text
    rule_id = r.json()["rule_id"]
    cert = client.get(f"/api/v1/policies/{rule_id}").json()["certificate"]
    assert cert["certified"] is True and cert["policy_version"] == 1 and cert["rule_id"] == rule_id
    assert {c["name"]: c["passed"] for c in cert["checks"]} == {
        "principles": True, "decisions": True, "fail_closed": True, "tests": True}
    assert cert["review"]["decision"] == "allow" and cert["review"]["tier"] == "reasoning"
    assert [(f["principle"], f["severity"]) for f in cert["review"]["findings"]] == [("P10-proportional-risk", "low")]
    keys = services.policies.certifier.keys
    assert verify(cert, keys) == "" and cert["signature"]["kid"] == keys.kid
    assert [rec["details"]["outcome"] for rec in certification_records(client, rule_id)] == ["certified"]
    # the dashboard says what certified it (the summary; every check, finding and the key in the tooltip)
    html = client.get("/").text
    assert "certified · 4/4 checks · review allow (reasoning)" in html
    assert f"signed by {keys.kid}" in html

    deadline = time.monotonic() + 30
    while True:  # the agent long-polls the new revision
        manifest = opa.get("/v1/data/system/bundles/groqpolicy/manifest").json().get("result") or {}
        shipped = manifest.get("metadata", {}).get("certificates", {}).get(rule_id)
        if shipped is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert shipped == cert
    assert verify(shipped, keys) == ""  # as the agent serves it, byte for byte what was signed
    # the policy the agent runs is the one certified
    decision = opa.post(f"/v1/data/groqpolicy/rules/p_{uuid.UUID(rule_id).hex}/decision", json={"input": {"amount": 500}})
    assert decision.json()["result"]["decision"] == "deny"


def test_the_cli_prints_what_certified_a_policy(system, tmp_path):
    client, services, _ = system
    (tmp_path / "limits.rego").write_text(LIMIT)
    (tmp_path / "limits_test.rego").write_text(TESTS)
    env = {**os.environ, "GROQPOLICY_URL": str(client.base_url), "GROQPOLICY_TOKEN": ADMIN_TOKEN}
    cli = [str(REPO_ROOT / ".venv" / "bin" / "groqpolicy"), "policies"]
    created = subprocess.run([*cli, "create", "limits.rego", "--name", "cli-limits", "--type", "risk_management",
                              "--principle", "P10-proportional-risk", "--tests", "limits_test.rego", "--review", "premium"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stdout + created.stderr
    rule_id = created.stdout.split()[1]
    shown = subprocess.run([*cli, "show", rule_id], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"{rule_id}  cli-limits  risk_management" in out
    assert "certificate: certified (policy version 1" in out
    for check in ("principles", "decisions", "fail_closed", "tests"):
        assert f"check {check:<11} pass" in out
    assert "model review   allow by " in out and "(premium)" in out
    assert f"signed by      {services.policies.certifier.keys.kid}" in out

    (tmp_path / "bad.rego").write_text(FAIL_OPEN)
    refused = subprocess.run([*cli, "create", "bad.rego", "--type", "risk_management"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert "is not certified, so it is not activated: fail_closed: probe synthetic input" in refused.stdout + refused.stderr


def test_a_review_no_model_could_give_refuses_the_write(system):
    client, _, _ = system
    text = LIMIT + "\n# [[groq-emulator:malformed]]\n"  # every emulated model answers garbage for this text
    r = client.post("/api/v1/policies", json=body(text, name="unreviewable", certification={"model_review": "premium"}))
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["type"] == "ReviewUnavailable" and error["message"].startswith("model review (premium): no model answered")
    assert "unreviewable" not in stored_names(client)


def test_an_update_is_certified_again_and_a_refused_one_keeps_the_stored_version(system):
    client, _, _ = system
    rule_id = client.post("/api/v1/policies", json=body(name="updated")).json()["rule_id"]
    r = client.put(f"/api/v1/policies/{rule_id}", json={"constitutional_hash": CONSTITUTIONAL_HASH,
                                                       "constitutional_principles": ["P11-unknown"]})
    assert r.status_code == 422 and "principle P11-unknown is not in the constitution" in r.json()["error"]["message"]
    got = client.get(f"/api/v1/policies/{rule_id}").json()
    assert got["version"] == 1 and got["constitutional_principles"] == ["P10-proportional-risk"]
    r = client.put(f"/api/v1/policies/{rule_id}", json={"constitutional_hash": CONSTITUTIONAL_HASH, "opa_policy": LIMIT + "\n"})
    assert r.status_code == 200, r.text
    cert = r.json()["certificate"]
    assert cert["policy_version"] == 2 and cert["certified"] and cert["review"] is None


def test_the_agent_shows_the_librarys_own_policies_certified(system):
    """Every policy an agent runs carries its certificate: the library's seven as well as the stored
    ones, signed with the record key, in `.manifest` metadata (`library_certificates`)."""
    _, services, opa = system
    keys = services.policies.certifier.keys
    manifest = opa.get("/v1/data/system/bundles/groqpolicy/manifest").json().get("result") or {}
    library = manifest.get("metadata", {}).get("library_certificates", {})
    want = sorted(p.name for p in (REPO_ROOT / "rego" / "policies").iterdir() if (p / "policy.rego").is_file())
    assert sorted(library) == want and len(want) == 7
    for kind, cert in library.items():
        assert verify(cert, keys) == "", kind
        assert cert["certified"] is True and cert["rule_id"] == f"library/{kind}"
        assert {c["name"]: c["passed"] for c in cert["checks"]} == {
            "principles": True, "decisions": True, "fail_closed": True, "tests": True}
    # each certified once by this control plane, and on its audit trail as a stored policy's certification
    client = system[0]
    audited = [rec for rec in certification_records(client) if rec["policy_ids"][0].startswith("library/")]
    assert sorted(rec["policy_ids"][0] for rec in audited) == [f"library/{kind}" for kind in want]  # once each
    for rec in audited:
        rule_id = rec["policy_ids"][0]
        assert rec["decision"] == "allow" and rec["details"]["outcome"] == "certified"
        assert rec["details"]["certificate"] == library[rule_id.removeprefix("library/")]
    # published again on request: the certificates come from what this process already certified
    r = client.post("/api/v1/bundles/publish", params={"force": "true"})
    assert r.status_code == 200 and "groqpolicy" in r.json()["published"], r.text
    again = [rec for rec in certification_records(client) if rec["policy_ids"][0].startswith("library/")]
    assert len(again) == len(want)
