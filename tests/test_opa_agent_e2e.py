"""A real `opa run --server` agent against the real control plane: signed bundles, long polling,
rejection of tampered and unsigned bundles, status and decision logs.

One agent serves the whole module (start-up and first activation cost seconds); the tests run in
file order and each leaves the agent on a good revision.
"""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

from bridge.opabundle.archive import read_bundle, write_bundle
from bridge.opabundle.signing import sign_bundle
from controlplane.bundles.compiler import Compiler
from controlplane.bundles.definitions import load_definition
from controlplane.infra.processes import free_port, start_opa_agent
from tests.conftest import REPO_ROOT
from tests.controlplane_helpers import ADMIN_HEADERS, make_settings, running_control_plane
from tests.policy_examples import load_policy_examples

pytestmark = pytest.mark.slow

BUNDLE = "groqpolicy"
PROBE_PATH = "/groqpolicy/probe/probe.rego"


def probe_module(rev: str) -> bytes:
    return f'package groqpolicy.probe\n\nrev := "{rev}"\n'.encode()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (httpx.HTTPError, ValueError, KeyError, StopIteration) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def closed_bridge_url():
    # nothing listens here: model-consulting policies must fail closed (review) through a real agent
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def compiled_library(closed_bridge_url):
    definition = load_definition(REPO_ROOT / "bundles" / f"{BUNDLE}.toml")
    overlay = {"groqpolicy": {"config": {"bridge_url": closed_bridge_url}}}
    return Compiler(REPO_ROOT).compile(definition, base=REPO_ROOT, overlay=overlay)


@pytest.fixture(scope="module")
def system(tmp_path_factory, compiled_library, opa_bin):
    state = tmp_path_factory.mktemp("state")
    settings = make_settings(state)
    with running_control_plane(settings) as services:
        services.publisher.publish(compiled_library)
        cp = httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30)
        config = cp.get("/api/v1/opa/config", params={"agent_id": "e2e-agent", "min_delay_s": 1, "max_delay_s": 2}).text
        config_file = state / "opa-agent.yaml"
        config_file.write_text(config)
        agent = start_opa_agent(config_file, state / "opa")
        opa = httpx.Client(base_url=agent.extra["url"], timeout=30)
        try:
            wait_for(lambda: opa.get("/health", params={"bundles": "true"}).status_code == 200, 30, "bundle activation")
            yield {"services": services, "cp": cp, "opa": opa, "agent": agent, "compiled": compiled_library}
        finally:
            agent.stop()
            cp.close()
            opa.close()


def publish_files(services, files: dict[str, bytes], revision: str, sign: bool = True) -> None:
    rego = write_bundle(sign_bundle(files, services.signing_key) if sign else files)
    services.store.activate(BUNDLE, revision, {"rego": rego}, signed_by=services.signing_key.kid if sign else "")


def with_probe(system, rev: str) -> dict[str, bytes]:
    """The library plus a probe module whose value (and manifest revision) is `rev`."""
    files = dict(system["compiled"].rego_files)
    files[PROBE_PATH] = probe_module(rev)
    manifest = json.loads(files["/.manifest"])
    files["/.manifest"] = json.dumps({**manifest, "revision": rev}).encode()
    return files


def probe_value(system):
    r = system["opa"].post("/v1/data/groqpolicy/probe/rev", json={})
    return r.json().get("result")


def test_agent_activates_signed_bundle_with_its_revision(system):
    # the agent exposes the active bundles' manifests under data.system.bundles
    r = system["opa"].get("/v1/data/system/bundles")
    bundles = r.json().get("result") or {}
    assert BUNDLE in bundles
    assert bundles[BUNDLE]["manifest"]["revision"] == system["compiled"].revision
    assert bundles[BUNDLE]["manifest"]["roots"] == ["groqpolicy", "system/authz"]


POLICY_TYPES = [
    "constitutional_compliance", "data_governance", "ethical_constraints", "regulatory_compliance",
    "operational_policies", "security_policies", "risk_management",
]
MODEL_CONSULTING = ["data_governance", "ethical_constraints"]


@pytest.fixture(scope="module")
def examples(opa_bin) -> dict:
    return load_policy_examples(opa_bin)


CASES = [(p, outcome, outcome) for p in POLICY_TYPES for outcome in ("allow", "deny", "review")]
CASES += [(p, "model_review", "review") for p in MODEL_CONSULTING]  # bridge unreachable -> review, never allow


@pytest.mark.parametrize(("policy", "example", "expected"), CASES, ids=[f"{p}-{e}" for p, e, _ in CASES])
def test_agent_answers_expected_decisions(system, examples, policy, example, expected):
    r = system["opa"].post(f"/v1/data/groqpolicy/policies/{policy}/decision", json={"input": examples[policy][example]})
    assert r.status_code == 200, r.text
    doc = r.json()["result"]
    assert doc["decision"] == expected, doc
    assert doc["constitutional_hash"] == "cdd01ef066bc6cf2"
    assert 0 <= doc["confidence"] <= 1
    assert isinstance(doc["reasons"], list)


def test_new_revision_reaches_agent_through_long_polling(system, capsys):
    services = system["services"]
    publish_files(services, with_probe(system, "lp-1"), "lp-1")
    wait_for(lambda: probe_value(system) == "lp-1", 20, "first probe revision")
    time.sleep(0.5)  # let the agent re-enter its long poll with the new ETag
    samples = []
    for i in range(3):
        rev = f"lp-{i + 2}"
        t0 = time.monotonic()
        publish_files(services, with_probe(system, rev), rev)
        wait_for(lambda rev=rev: probe_value(system) == rev, 10, f"revision {rev}", interval=0.01)
        samples.append(time.monotonic() - t0)
        time.sleep(0.3)
    with capsys.disabled():
        print(f"\nlong-poll propagation (activate -> agent answers with new revision): "
              f"{', '.join(f'{s * 1000:.0f} ms' for s in samples)}")
    # min_delay is 1 s in this config: only long polling can deliver well under it, every time
    assert max(samples) < 2.0


def agent_bundle_status(system) -> dict:
    agents = system["cp"].get("/api/v1/opa/agents").json()
    agent = next(a for a in agents if a["id"] == "e2e-agent")
    return next(b for b in agent["bundles"] if b["name"] == BUNDLE)


def test_tampered_bundle_is_rejected_and_previous_revision_keeps_serving(system):
    services = system["services"]
    publish_files(services, with_probe(system, "good-1"), "good-1")
    wait_for(lambda: probe_value(system) == "good-1", 20, "good revision")
    signed = sign_bundle(with_probe(system, "evil"), services.signing_key)
    tampered = dict(signed)
    tampered[PROBE_PATH] = signed[PROBE_PATH].replace(b"evil", b"evim")  # one byte of one file
    services.store.activate(BUNDLE, "tampered", {"rego": write_bundle(tampered)})
    status = wait_for(lambda: (s := agent_bundle_status(system))["code"] and s, 20, "a status report with the error")
    assert status["code"] == "bundle_error"
    assert "groqpolicy/probe/probe.rego: digest mismatch" in json.dumps(status)
    assert status["active_revision"] == "good-1"
    assert probe_value(system) == "good-1"
    assert system["opa"].post("/v1/data/groqpolicy/probe/rev", json={}).json()["result"] == "good-1"


def test_unsigned_bundle_is_rejected_and_previous_revision_keeps_serving(system):
    services = system["services"]
    publish_files(services, with_probe(system, "good-2"), "good-2")
    wait_for(lambda: probe_value(system) == "good-2" and not agent_bundle_status(system)["code"], 30, "good revision 2")
    publish_files(services, with_probe(system, "unsigned"), "unsigned", sign=False)
    status = wait_for(lambda: (s := agent_bundle_status(system))["code"] and s, 20, "a status report with the error")
    assert status["code"] == "bundle_error"
    assert "signature" in json.dumps(status).lower()
    assert status["active_revision"] == "good-2"
    time.sleep(1.0)
    assert probe_value(system) == "good-2"
    # and a good revision afterwards is picked up again
    publish_files(services, with_probe(system, "good-3"), "good-3")
    wait_for(lambda: probe_value(system) == "good-3", 30, "recovery to a good revision")


def test_decision_logs_from_the_agent_arrive_and_read_back(system):
    opa = system["opa"]
    r = opa.post("/v1/data/groqpolicy/probe/rev", json={"input": {"marker": "decision-log-probe"}})
    decision_id = r.json()["decision_id"]

    def arrived():
        got = system["cp"].get("/api/v1/opa/decisions", params={"decision_id": decision_id}).json()
        return got["decisions"]

    events = wait_for(arrived, 20, "the decision log upload")
    assert events[0]["input"] == {"marker": "decision-log-probe"}
    assert events[0]["path"] == "groqpolicy/probe/rev"
    assert BUNDLE in events[0]["bundles"]


def test_agent_accepts_bundle_signed_by_real_opa_build_with_our_key(system, opa_bin, tmp_path):
    """Cross-check: a bundle built and signed by the real `opa build --signing-key` with our key is accepted too."""
    services = system["services"]
    src = tmp_path / "src" / "groqpolicy" / "probe"
    src.mkdir(parents=True)
    (src / "probe.rego").write_bytes(probe_module("opa-signed"))
    key_file = tmp_path / "key.pem"
    key_file.write_text(services.signing_key.private_pem)
    out = tmp_path / "b.tar.gz"
    subprocess.run(
        [str(opa_bin), "build", "-b", "src", "--signing-key", str(key_file), "--signing-alg", services.signing_key.alg,
         "--verification-key-id", services.signing_key.kid, "-o", str(out)],
        cwd=tmp_path, check=True, capture_output=True,
    )
    files = read_bundle(out.read_bytes())
    assert "/.signatures.json" in files
    services.store.activate(BUNDLE, "opa-signed", {"rego": out.read_bytes()})
    wait_for(lambda: probe_value(system) == "opa-signed", 20, "the opa-signed revision")
    # restore the library for any later test
    publish_files(services, with_probe(system, "restored"), "restored")
    wait_for(lambda: probe_value(system) == "restored", 20, "restored revision")
