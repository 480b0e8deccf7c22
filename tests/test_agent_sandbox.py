"""OPA agents run sandboxed, as `groqpolicy up` starts them: a real control plane, a real `opa`
agent with token authentication and the bundle's `system.authz` policy, real NATS.

A stored policy cannot reach the control plane or the agent's own API with `http.send` (a constant
URL is refused at compile time with its row and column; a computed one meets a 401, since a policy
holds no token), `opa.runtime()` shows no secret, the agent's REST API refuses anonymous callers and
every write, the bridge token never reaches stored decision logs, and an agent restarted while the
control plane is down keeps enforcing the last revision it activated.
"""

from __future__ import annotations

import json
import stat
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from bridge.inference.gateway import create_app as create_gateway
from bridge.kernel.errors import ConfigError
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.bundles import netcheck
from controlplane.infra.processes import free_port, start_opa_agent
from tests.bridge_helpers import BRIDGE_HEADERS, BRIDGE_TOKEN, gateway_on, post
from tests.controlplane_helpers import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    AGENT_TOKEN,
    EVALUATE_TOKEN,
    bearer,
    make_settings,
    running_control_plane,
)

PROBE = """package probe

# computed URLs: the compile step cannot judge them, the agent's neighbours refuse them
cp := http.send({"method": "GET", "url": concat("", [input.cp, "/api/v1/policies"]), "raise_error": false})

own := http.send({"method": "GET", "url": concat("", [input.agent, "/v1/policies"]), "raise_error": false})

judged := data.groqpolicy.lib.groq.judge("fast", "Is this fine?", {"text": "probe"})

decision := {
	"decision": "deny", "reasons": ["deny: probe"], "confidence": 1,
	"cp": cp.status_code, "cp_body": object.get(cp, "body", null), "own": own.status_code,
	"runtime": opa.runtime(), "judged": judged.reason,
}
"""

CONSTANT = """package reach

peek := http.send({"method": "GET", "url": "http://127.0.0.1:8015/api/v1/policies"})

decision := {"decision": "allow", "reasons": [peek.status], "confidence": 1}
"""


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def create(cp: httpx.Client, text: str) -> httpx.Response:
    return cp.post("/api/v1/policies", json={"name": f"sandbox {uuid.uuid4().hex[:6]}", "policy_type": "security_policies",
                                             "opa_policy": text, "performance_tier": "fast",
                                             "constitutional_hash": CONSTITUTIONAL_HASH})


@pytest.mark.parametrize(("url", "ok"), [
    ("http://127.0.0.1:8016/v1/infer/fast", True),
    ("http://127.0.0.1:8016", True),
    ("http://127.0.0.1:8015/api/v1/policies", False),  # same host, another port: the control plane
    ("http://127.0.0.1:8181/v1/policies", False),  # the agent's own API
    ("https://127.0.0.1:8016/v1/infer/fast", False),
    ("http://evil.example/", False),
    ("http://127.0.0.1:notaport/", False),
])
def test_only_the_bridge_is_an_allowed_constant_url(url, ok):
    assert netcheck.allowed(url, "http://127.0.0.1:8016") is ok


MODULE = """package m

direct := http.send({"method": "GET", "url": "http://127.0.0.1:8015/api/v1/policies"})

bridge := http.send({"method": "POST", "url": "http://127.0.0.1:8016/v1/infer/fast"})

computed := http.send({"method": "GET", "url": concat("", [input.base, "/x"])})

indirect if {
	req := {"url": "http://127.0.0.1:8181/v1/policies", "method": "GET"}
	http.send(req)
}

unrelated := {"url": "http://example.com/docs"}
"""


def test_constant_urls_off_the_bridge_are_found_where_they_are(opa_bin, tmp_path):
    (tmp_path / "m.rego").write_text(MODULE)
    ast = subprocess.run([str(opa_bin), "parse", "--format", "json", "--json-include", "locations", "m.rego"],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    found = netcheck.violations(ast, "http://127.0.0.1:8016")
    assert [(v.row, v.col) for v in found] == [(3, 46), (10, 17)]
    assert found[1].message == ("http.send to 'http://127.0.0.1:8181/v1/policies': a policy may call only the bridge "
                                "gateway (http://127.0.0.1:8016)")


def test_the_gateway_refuses_requests_without_its_token(nats_server):
    async def scenario():
        async with gateway_on(nats_server.extra["url"]) as gw, httpx.AsyncClient() as c:
            body = {"question": "q?"}
            missing = await c.post(f"{gw.url}/v1/infer/fast", json=body)
            wrong = await c.post(f"{gw.url}/v1/infer/fast", json=body, headers=bearer("x" * 32))
            assert missing.status_code == wrong.status_code == 401
            assert missing.json()["error"]["message"].startswith("missing bridge token")
            assert wrong.json()["error"]["code"] == "invalid_api_key"
            # with the token the request gets past the door (no worker here: 503, not 401)
            assert (await post(c, gw.url, "fast", body)).status_code == 503
            assert (await c.get(f"{gw.url}/health")).status_code == 200  # liveness stays open
    import asyncio

    asyncio.run(scenario())
    with pytest.raises(ConfigError, match="GROQPOLICY_BRIDGE_TOKEN_FILE"):
        create_gateway(nats_server.extra["url"], token="")
    assert BRIDGE_HEADERS["Authorization"].endswith(BRIDGE_TOKEN)


@pytest.mark.slow
def test_agents_are_sandboxed_and_keep_enforcing_while_the_control_plane_is_down(tmp_path: Path, nats_server, opa_bin):
    (tmp_path / "bridge-token").write_text(BRIDGE_TOKEN)
    bridge_url = f"http://127.0.0.1:{free_port()}"  # nothing listens: model calls fail closed
    settings = make_settings(tmp_path / "state", compile_on_start=True, nats_url=nats_server.extra["url"],
                             bridge_url=bridge_url, bridge_token_file=tmp_path / "bridge-token")
    workdir, config_file = tmp_path / "opa", tmp_path / "agent.yaml"
    agent = None
    try:
        with running_control_plane(settings), httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS,
                                                            timeout=60) as cp:
            # a constant URL off the bridge never becomes a revision: refused with where it is
            refused = create(cp, CONSTANT)
            assert refused.status_code == 422, refused.text
            message = refused.json()["error"]["message"]
            assert "opa_policy:3:44: rego_http_send_refused: http.send to 'http://127.0.0.1:8015/api/v1/policies'" in message
            made = create(cp, PROBE)
            assert made.status_code == 201, made.text
            path = made.json()["entrypoint"]
            config_file.write_text(cp.get("/api/v1/opa/config", params={"agent_id": "sandboxed", "min_delay_s": 1,
                                                                         "max_delay_s": 2}).text)
            agent = start_opa_agent(config_file, workdir, authenticated=True)
            opa = httpx.Client(base_url=agent.extra["url"], timeout=30)
            wait_for(lambda: opa.get("/health", params={"bundles": "true"}).status_code == 200, 60, "bundle activation")

            r = opa.post(f"/v1/data/{path}", json={"input": {"cp": settings.base_url, "agent": agent.extra["url"]}},
                         headers=bearer(EVALUATE_TOKEN))
            assert r.status_code == 200, r.text
            doc = r.json()["result"]
            assert (doc["cp"], doc["own"]) == (401, 401), doc  # neither neighbour answers a policy
            assert "policies" not in json.dumps(doc["cp_body"])
            assert set(doc["runtime"]["env"]) <= {"PATH"}, doc["runtime"]["env"]
            shown = json.dumps(doc["runtime"])
            for secret in (ADMIN_TOKEN, EVALUATE_TOKEN, AGENT_TOKEN, BRIDGE_TOKEN):
                assert secret not in shown
            assert doc["judged"].startswith("bridge unreachable")  # fail closed: the decision stays deny

            # the REST API: nobody anonymous, nobody writes, evaluate tokens do not read the configuration
            evil = "package evil\n\nallow := true\n"
            assert opa.put("/v1/policies/x", content=evil).status_code == 401
            assert opa.put("/v1/policies/x", content=evil, headers=ADMIN_HEADERS).status_code == 401
            assert opa.post(f"/v1/data/{path}", json={"input": {}}).status_code == 401
            assert opa.post("/v1/data/groqpolicy/config", headers=bearer(EVALUATE_TOKEN)).status_code == 401
            assert opa.post("/v1/query", json={"query": "x := 1"}, headers=ADMIN_HEADERS).status_code == 401
            assert opa.get("/v1/policies", headers=ADMIN_HEADERS).status_code == 200

            # decision logs arrive, and the bridge token that OPA logged with the http.send request does not stay
            decision_id = r.json()["decision_id"]
            events = wait_for(lambda: cp.get("/api/v1/opa/decisions", params={"decision_id": decision_id})
                              .json()["decisions"], 30, "the decision log")
            assert "[redacted bridge token]" in json.dumps(events[0]) and BRIDGE_TOKEN not in json.dumps(events[0])
            logs = settings.state_dir / "decision_logs.jsonl"
            assert BRIDGE_TOKEN not in logs.read_text()
            for private in (logs, settings.state_dir / "bundles" / "groqpolicy" / "rego.tar.gz"):
                assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
            assert stat.S_IMODE((workdir / "persist").stat().st_mode) == 0o700

        # the control plane is gone; an agent restarted now enforces the revision it persisted
        agent.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{settings.base_url}/health")
        agent = start_opa_agent(config_file, workdir, authenticated=True)
        opa = httpx.Client(base_url=agent.extra["url"], timeout=30)
        wait_for(lambda: opa.get("/health", params={"bundles": "true"}).status_code == 200, 60, "the persisted bundle")
        again = opa.post(f"/v1/data/{path}", json={"input": {"cp": settings.base_url, "agent": agent.extra["url"]}},
                         headers=bearer(EVALUATE_TOKEN))
        assert again.status_code == 200 and again.json()["result"]["decision"] == "deny", again.text
        assert opa.put("/v1/policies/x", content=evil).status_code == 401  # its authz policy persisted too
    finally:
        if agent is not None:
            agent.stop()
