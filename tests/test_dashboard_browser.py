"""The dashboard in a real headless Chromium (Debian's `chromium`, installed by
`python -m controlplane.dashboard.browser ensure` when missing), driven over the DevTools protocol.

The test makes real evaluations first (HTTP API, a real inference worker answering from the Groq
emulator over NATS for the policy that asks a model), signs in through the login form, and then
checks what the browser shows: no console errors, the example policies, the decisions chart with
exactly the outcomes the test produced, the latency rows of the tiers it used and a cache hit. A
full-page screenshot lands in the test's output directory (printed; kept by pytest's tmp_path)."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.dashboard.browser import Chromium, ensure_chromium
from controlplane.infra.processes import ManagedProcess, start_opa_agent
from tests.controlplane_helpers import ADMIN_HEADERS, ADMIN_TOKEN, EVALUATE_TOKEN, bearer, control_plane_with_worker
from tests.stored_policies import HEAD, MODEL_JUDGMENT

pytestmark = pytest.mark.slow

H = CONSTITUTIONAL_HASH
GATE = HEAD + """d contains "deletes need a ticket" if input.action == "delete"

r contains "flagged for a human" if input.flag

decision := doc.document("gate", d, r, {"read is fine"}, 1, ["P3-least-privilege"])
"""
# no allow reasons of its own: a request the model does not object to is allowed with the generic reason
JUDGE = MODEL_JUDGMENT + """
decision := doc.document("judge", d, r, {"model found nothing wrong"}, 1, ["P1-human-oversight"])
"""
EXAMPLE_TITLES = ("Security policies", "Ethical constraints")  # two of the seven rego/policies examples
AGENT = "dash-agent"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-output"  # git-ignored


@pytest.fixture(scope="module")
def chromium() -> Path:
    return ensure_chromium()


@pytest.fixture(scope="module")
def system(tmp_path_factory, nats_server_module, emu_module):
    tmp = tmp_path_factory.mktemp("dash-browser")
    with control_plane_with_worker(tmp, nats_server_module.extra["url"], emu_module.url) as (settings, services, _):
        with httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=60) as client:
            for name, ptype, tier, rego in (("dashboard gate", "security_policies", "nano", GATE),
                                            ("content judge", "ethical_constraints", "fast", JUDGE)):
                r = client.post("/api/v1/policies", json={"name": name, "policy_type": ptype, "performance_tier": tier,
                                                          "opa_policy": rego, "constitutional_hash": H})
                assert r.status_code == 201, r.text
            agent = start_agent(client, tmp)
            try:
                yield client, services, agent
            finally:
                agent.stop()


def start_agent(client: httpx.Client, tmp: Path) -> ManagedProcess:
    """A real OPA agent configured from the control plane, up once it reported the current revision."""
    cfg = client.get("/api/v1/opa/config", params={"agent_id": AGENT, "min_delay_s": 1, "max_delay_s": 2,
                                                   "log_min_delay_s": 1, "log_max_delay_s": 1, "long_polling_timeout_s": 1}).text
    (tmp / "agent.yaml").write_text(cfg)
    agent = start_opa_agent(tmp / "agent.yaml", tmp / "opa")
    try:
        current = client.get("/health").json()["bundles"]
        deadline = time.monotonic() + 30
        while True:
            reported = {a["id"]: a for a in client.get("/api/v1/opa/agents").json()}
            bundles = {b["name"]: b["active_revision"] for b in (reported.get(AGENT) or {}).get("bundles", [])}
            if bundles.get("groqpolicy") and any(f"groqpolicy/rego@{bundles['groqpolicy']}" == b for b in current):
                return agent
            assert time.monotonic() < deadline, (reported, current, agent.log()[-2000:])
            time.sleep(0.2)
    except BaseException:
        agent.stop()
        raise


def evaluate(client: httpx.Client, ctx: dict, types: list[str], tier: str) -> dict:
    r = client.post("/api/v1/evaluate", headers=bearer(EVALUATE_TOKEN), json={
        "input_context": ctx, "policy_types": types, "performance_tier": tier, "constitutional_hash": H})
    assert r.status_code == 200, r.text
    return r.json()


def test_dashboard_in_headless_chromium(system, chromium, tmp_path):
    client, _, agent = system
    made = [evaluate(client, {"principal": "alice", "action": "read"}, ["security_policies"], "nano") for _ in range(3)]
    made += [evaluate(client, {"principal": "alice", "action": "delete"}, ["security_policies"], "nano") for _ in range(2)]
    made += [evaluate(client, {"principal": "alice", "action": "read", "flag": True}, ["security_policies"], "nano")]
    # the same text twice: the second model lookup is a cache hit (the control plane's own copy, L0)
    made += [evaluate(client, {"principal": "bob", "text": "Tips for a 10k run?"}, ["ethical_constraints"], "fast") for _ in range(2)]
    outcomes = Counter(m["decision"] for m in made)
    assert {"allow", "deny", "review"} <= set(outcomes), outcomes
    assert sum(m["performance_metrics"]["model_calls"] for m in made) == 2
    # one decision through the OPA agent: its decision log becomes an audit record too
    r = httpx.post(f"{agent.extra['url']}/v1/data/groqpolicy/policies/security_policies/decision", timeout=30, json={"input": {
        "principal": {"id": "bob", "roles": ["viewer"], "mfa": True, "source_ip": "10.1.2.3"},
        "action": "delete", "resource": {"type": "reports", "classification": "internal"}}})
    assert r.json()["result"]["decision"] == "deny"
    deadline = time.monotonic() + 20
    while not client.get("/api/v1/audit", params={"decision_id": r.json()["decision_id"]}).json()["records"]:
        assert time.monotonic() < deadline, agent.log()[-2000:]
        time.sleep(0.2)
    outcomes["deny"] += 1

    base = str(client.base_url).rstrip("/")
    with Chromium(chromium) as browser:
        page = browser.new_page()
        # sign in the way a person does: the form
        page.navigate(f"{base}/dashboard/login")
        assert page.evaluate("document.title") == "groqpolicy — sign in"
        page.evaluate(f"document.getElementById('token').value = {json.dumps(ADMIN_TOKEN)}; "
                      "setTimeout(() => document.querySelector('#login form').submit(), 0); true")
        page.wait_for("Page.loadEventFired")
        assert page.evaluate("location.pathname") == "/"
        assert page.evaluate("document.title") == "groqpolicy — dashboard"
        # switch the 10 s auto-refresh off first (it must not reload the page under the test), through its own JS
        assert page.evaluate("document.getElementById('autorefresh').checked") is True
        page.evaluate("document.getElementById('autorefresh').click(); true")
        assert page.evaluate("localStorage.getItem('groqpolicy.autorefresh')") == "off"
        page.drain(0.5)
        assert page.console_errors() == []

        policies = page.evaluate("[...document.querySelectorAll('#policies tr.policy')].map(tr => "
                                 "[tr.dataset.origin, tr.dataset.type, tr.cells[0].innerText.trim(), tr.cells[4].innerText.trim(), "
                                 "tr.cells[7].innerText.trim(), tr.cells[7].title])")
        library = [p for p in policies if p[0] == "library"]
        assert len(library) == 7 and {p[3] for p in library} == {"compiled"}
        # each with the certificate the bundle ships it with to the agents (checks passed, signer in the tooltip)
        for p in library:
            assert re.fullmatch(r"certified · (\d+)/\1 checks", p[4]) and "signed by " in p[5], p
        policies = [p[:4] for p in policies]
        assert set(EXAMPLE_TITLES) <= {p[2] for p in library}
        stored = {p[2]: p for p in policies if p[0] == "stored"}
        assert stored["dashboard gate"][1:] == ["security_policies", "dashboard gate", "compiled"]
        assert stored["content judge"][1] == "ethical_constraints"

        # the decisions chart: drawn bars whose numbers are the evaluations made above
        bars = page.evaluate("[...document.querySelectorAll('#decisions-chart rect.bar')].map(r => "
                             "({outcome: r.dataset.outcome, count: +r.dataset.count, height: r.getBoundingClientRect().height}))")
        assert bars and all(b["height"] > 0 for b in bars)
        drawn: Counter[str] = Counter()
        for b in bars:
            drawn[b["outcome"]] += b["count"]
        assert drawn == outcomes

        tiers = page.evaluate("Object.fromEntries([...document.querySelectorAll('#latency-chart g.tier-latency')].map(g => "
                              "[g.dataset.tier, {count: +g.dataset.count, p99: +g.dataset.p99, target: +g.dataset.target}]))")
        assert {t: v["count"] for t, v in tiers.items()} == {"nano": 6, "fast": 2}
        assert tiers["nano"]["target"] == 1 and tiers["fast"]["target"] == 2
        slowest_fast = max(m["performance_metrics"]["total_latency_ms"] for m in made[-2:])
        assert tiers["fast"]["p99"] == pytest.approx(slowest_fast, abs=1e-3)

        rate = page.evaluate("document.getElementById('cache-rate').dataset.rate")
        assert rate and 0 < float(rate) <= 1
        assert page.evaluate("document.getElementById('inference-mode').dataset.mode") == "emulated"
        # every evaluation, the agent's decision, and each stored policy's certificate (source `certification`)
        certified = client.get("/api/v1/audit", params={"source": "certification", "limit": 200}).json()["records"]
        assert certified
        assert page.evaluate("document.querySelectorAll('#audit tr.audit-row').length") == len(made) + 1 + len(certified)
        agents = page.evaluate("[...document.querySelectorAll('#agents tr.agent')].map(tr => [...tr.cells].map(c => c.innerText.trim()))")
        assert len(agents) == 1 and agents[0][0] == AGENT and agents[0][1] == "groqpolicy"
        revision = client.get("/health").json()["bundles"][0].rsplit("@", 1)[1]
        assert agents[0][2] == f"{revision} current" and agents[0][3] == "activated"
        assert page.evaluate("document.getElementById('chain-status').innerText").startswith("intact")

        shot = page.screenshot(tmp_path / "dashboard.png")
        assert shot.stat().st_size > 20_000
        # a reload keeps auto-refresh off, still without a console error
        page.navigate(f"{base}/")
        assert page.evaluate("document.getElementById('autorefresh').checked") is False
        page.drain(0.2)
        assert page.console_errors() == []
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "dashboard.png")
    print(f"dashboard screenshot: {shot} (copy: {ARTIFACTS / 'dashboard.png'})")


def test_the_console_error_check_sees_errors(chromium, tmp_path):
    """The detector the dashboard test relies on: a console error, an uncaught exception and a
    failed load are all reported (so `console_errors() == []` above means something)."""
    html = tmp_path / "bad.html"
    html.write_text('<!doctype html><title>bad</title><img src="missing.png">'
                    '<script>console.error("boom"); setTimeout(() => { throw new Error("kaput"); }, 0);</script>')
    with Chromium(chromium) as browser:
        page = browser.new_page()
        page.navigate(html.as_uri())
        page.drain(0.5)
        errors = page.console_errors()
    assert any(e == "console: boom" for e in errors), errors
    assert any(e.startswith("exception: Uncaught") and "kaput" in e for e in errors), errors
    assert any(e.startswith("log: ") and "missing.png" in e for e in errors), errors
