"""Bearer tokens and scopes over real HTTP: 401/403 with exact messages, public routes, agent
configs that carry the agent token, per-client rate limits (429), token configuration errors."""

from __future__ import annotations

import os
import re
import secrets
import stat

import httpx
import pytest
import yaml
from litestar import Litestar, get

from bridge.kernel.config import Settings
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.app import create_app
from controlplane.auth.guards import UnguardedRoute, check_routes, declares_scope, requires
from controlplane.auth.ratelimit import RateLimitSpecError, parse_rate
from controlplane.auth.tokens import TokenConfigError, ensure_tokens, parse_tokens
from tests.controlplane_helpers import (
    ADMIN_TOKEN,
    AGENT_TOKEN,
    EVALUATE_TOKEN,
    bearer,
    gzip_json,
    make_settings,
    running_control_plane,
)

REALM = 'Bearer realm="groqpolicy"'


def error(r: httpx.Response) -> tuple[int, str, str]:
    body = r.json()["error"]
    return r.status_code, body["type"], body["message"]


def test_missing_token_is_401_with_bearer_challenge(cp):
    client, _ = cp
    r = client.get("/api/v1/policies")
    assert error(r) == (401, "NotAuthorizedException", "missing bearer token (send Authorization: Bearer <token>)")
    assert r.headers["www-authenticate"] == REALM


def test_wrong_scheme_and_unknown_token_are_401(cp):
    client, _ = cp
    r = client.get("/api/v1/policies", headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
    assert error(r) == (401, "NotAuthorizedException", "Authorization: expected 'Bearer <token>'")
    r = client.get("/api/v1/policies", headers={"Authorization": "Bearer"})
    assert error(r) == (401, "NotAuthorizedException", "Authorization: expected 'Bearer <token>'")
    r = client.get("/api/v1/policies", headers=bearer("not-a-configured-token-at-all"))
    assert error(r) == (401, "NotAuthorizedException", "invalid bearer token")
    assert r.headers["www-authenticate"] == f'{REALM}, error="invalid_token"'


@pytest.mark.parametrize(
    ("token", "method", "path", "body", "needed", "name", "has"),
    [
        (EVALUATE_TOKEN, "POST", "/api/v1/policies", {}, "'admin'", "evaluate", "evaluate"),
        (EVALUATE_TOKEN, "POST", "/api/v1/bundles/publish", None, "'admin'", "evaluate", "evaluate"),
        (AGENT_TOKEN, "GET", "/api/v1/audit", None, "'admin'", "agent", "agent"),
        (AGENT_TOKEN, "POST", "/api/v1/evaluate", {}, "'evaluate'", "agent", "agent"),
        (AGENT_TOKEN, "POST", "/api/v1/evaluate/batch", {}, "'evaluate'", "agent", "agent"),
        (AGENT_TOKEN, "GET", "/api/v1/groq/models", None, "'evaluate'", "agent", "agent"),
        (AGENT_TOKEN, "POST", "/api/v1/opa/evaluate", {}, "'evaluate'", "agent", "agent"),
        (EVALUATE_TOKEN, "GET", "/bundles/groqpolicy", None, "'agent'", "evaluate", "evaluate"),
        (EVALUATE_TOKEN, "POST", "/logs", [], "'agent'", "evaluate", "evaluate"),
        (EVALUATE_TOKEN, "POST", "/status", {}, "'agent'", "evaluate", "evaluate"),
        (EVALUATE_TOKEN, "GET", "/api/v1/opa/config", None, "'admin' or 'agent'", "evaluate", "evaluate"),
        (AGENT_TOKEN, "GET", "/api/v1/opa/agents", None, "'admin'", "agent", "agent"),
        (EVALUATE_TOKEN, "GET", "/api/v1/opa/decisions", None, "'admin'", "evaluate", "evaluate"),
    ],
)
def test_wrong_scope_is_403_naming_the_scope(cp, token, method, path, body, needed, name, has):
    client, _ = cp
    r = client.request(method, path, json=body, headers=bearer(token))
    assert error(r) == (403, "PermissionDeniedException", f"scope {needed} required; token {name!r} has {has}")
    assert r.json()["error"]["details"]["token_scopes"] == [has]


def test_scope_checks_come_before_body_validation(cp):
    client, _ = cp
    r = client.post("/api/v1/evaluate", content=b"{not json", headers={**bearer(AGENT_TOKEN), "Content-Type": "application/json"})
    assert r.status_code == 403


def test_right_scopes_pass(cp):
    client, services = cp
    services.store.activate("b", "r1", {"rego": b"bundle"})
    assert client.get("/bundles/b", headers=bearer(AGENT_TOKEN)).status_code == 200
    assert client.post("/status", json={"labels": {"id": "a1"}}, headers=bearer(AGENT_TOKEN)).status_code == 204
    r = client.post("/logs", content=gzip_json([{"decision_id": "auth-1", "result": True}]),
                    headers={**bearer(AGENT_TOKEN), "Content-Encoding": "gzip"})
    assert r.status_code == 204
    assert client.get("/api/v1/groq/models", headers=bearer(EVALUATE_TOKEN)).status_code == 200
    r = client.post("/api/v1/evaluate", headers=bearer(EVALUATE_TOKEN), json={
        "input_context": {"principal": "alice"}, "policy_types": ["security_policies"], "performance_tier": "fast",
        "constitutional_hash": CONSTITUTIONAL_HASH})
    assert r.status_code == 200, r.text
    assert client.get("/api/v1/opa/agents", headers=bearer(ADMIN_TOKEN)).status_code == 200


def test_health_metrics_and_schema_are_open(cp):
    client, _ = cp
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/schema/openapi.json").status_code == 200


def test_every_other_route_refuses_an_anonymous_request(cp):
    """Walk the app's routes: everything but the public ones answers 401 without a token."""
    client, services = cp
    app = create_app(services.settings, services)
    checked = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if handler.opt.get("public") or route.path.startswith("/schema"):
                continue
            if handler.http_methods <= {"OPTIONS", "HEAD"}:
                continue
            assert declares_scope(handler), route.path
            path = re.sub(r"\{[^}:]+:uuid\}", "00000000-0000-0000-0000-000000000000", route.path)
            path = re.sub(r"\{[^}]+\}", "x", path)
            for method in sorted(handler.http_methods - {"HEAD", "OPTIONS"}):
                r = client.request(method, path)
                assert r.status_code == 401, (method, path, r.status_code, r.text)
                checked.append(f"{method} {path}")
    assert len(checked) >= 20, checked


def test_guarded_routes_hand_their_guards_the_handler_itself(cp):
    """controlplane.routes' decorators: every guarded route of the app uses them, and a guard gets
    the route's handler (Litestar's own decorators hand each guard a fresh copy)."""
    from litestar.testing import TestClient

    from controlplane import routes

    _, services = cp
    app = create_app(services.settings, services)
    guarded = [h for r in app.routes for h in getattr(r, "route_handlers", []) if h.resolve_guards() and h.http_methods - {"OPTIONS", "HEAD"}]
    assert len(guarded) >= 20 and all(isinstance(h, routes.GuardedRoute) for h in guarded), \
        [h for h in guarded if not isinstance(h, routes.GuardedRoute)]
    seen = []

    async def guard(connection, handler) -> None:
        seen.append(handler)

    @routes.get("/ours", guards=[guard], sync_to_thread=False)
    def ours() -> str:
        return "ok"

    @get("/theirs", guards=[guard], sync_to_thread=False)
    def theirs() -> str:
        return "ok"

    small = Litestar([ours, theirs])
    registered = {r.path: h for r in small.routes for h in getattr(r, "route_handlers", []) if "GET" in h.http_methods}
    with TestClient(small) as client:
        assert client.get("/ours").text == "ok" and client.get("/theirs").text == "ok"
    assert seen[0] is registered["/ours"]
    assert seen[1] is not registered["/theirs"] and type(seen[1]) is type(registered["/theirs"])


def test_an_app_with_an_unguarded_route_does_not_start():
    @get("/open", sync_to_thread=False)
    def open_route() -> str:
        return "oops"

    @get("/fine", guards=[requires("evaluate")], sync_to_thread=False)
    def fine() -> str:
        return "ok"

    check_routes(Litestar([fine]))
    with pytest.raises(UnguardedRoute) as exc:
        check_routes(Litestar([fine, open_route]))
    assert str(exc.value) == "routes without guards=[requires(...)] or opt={'public': True}: GET /open"


def test_agent_config_carries_the_callers_agent_token(cp):
    client, _ = cp
    cfg = yaml.safe_load(client.get("/api/v1/opa/config", headers=bearer(AGENT_TOKEN)).text)
    assert cfg["services"]["groqpolicy"]["credentials"] == {"bearer": {"token": AGENT_TOKEN}}
    # an admin gets the least-privileged agent token, never its own
    cfg = yaml.safe_load(client.get("/api/v1/opa/config", headers=bearer(ADMIN_TOKEN)).text)
    assert cfg["services"]["groqpolicy"]["credentials"] == {"bearer": {"token": AGENT_TOKEN}}


def test_rate_limit_is_per_client_and_spares_agents(tmp_path, nats_server):
    settings = make_settings(tmp_path / "state", nats_url=nats_server.extra["url"], rate_limit="3/minute")
    with running_control_plane(settings) as services, httpx.Client(base_url=settings.base_url, timeout=30) as client:
        services.store.activate("b", "r1", {"rego": b"bundle"})
        for i in range(3):
            r = client.get("/api/v1/groq/models", headers=bearer(EVALUATE_TOKEN))
            assert r.status_code == 200
            assert r.headers["ratelimit-limit"] == "3" and r.headers["ratelimit-remaining"] == str(2 - i)
        r = client.get("/api/v1/groq/models", headers=bearer(EVALUATE_TOKEN))
        assert r.status_code == 429
        _, kind, message = error(r)
        assert kind == "TooManyRequestsException"
        assert re.fullmatch(r"rate limit: 3 requests per minute exceeded; retry in \d+s", message), message
        assert 1 <= int(r.headers["retry-after"]) <= 60 and r.headers["ratelimit-remaining"] == "0"
        # another client (token) has its own budget; anonymous requests are counted by address
        assert client.get("/api/v1/groq/models", headers=bearer(ADMIN_TOKEN)).status_code == 200
        # agents polling bundles, health checks and scrapes are never limited
        for _ in range(10):
            assert client.get("/bundles/b", headers=bearer(AGENT_TOKEN)).status_code == 200
            assert client.get("/health").status_code == 200
            assert client.get("/metrics").status_code == 200


def test_rotating_random_tokens_are_rate_limited_by_address(tmp_path, nats_server):
    """A new random bearer string per request is not a new client: unknown tokens count against the
    caller's address, on every route (the agents' routes too), and a known token keeps its own budget."""
    settings = make_settings(tmp_path / "state", nats_url=nats_server.extra["url"], rate_limit="5/minute")
    with running_control_plane(settings) as services, httpx.Client(base_url=settings.base_url, timeout=30) as client:
        services.store.activate("b", "r1", {"rego": b"bundle"})
        statuses = [client.get(path, headers=bearer(secrets.token_urlsafe(24))).status_code
                    for path in ["/api/v1/groq/models", "/bundles/b"] * 4]
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}, statuses
        r = client.get("/api/v1/groq/models")  # no token at all: the same address, the same budget
        assert r.status_code == 429 and r.headers["retry-after"]
        assert client.get("/api/v1/groq/models", headers=bearer(EVALUATE_TOKEN)).status_code == 200
        assert client.get("/bundles/b", headers=bearer(AGENT_TOKEN)).status_code == 200


def test_token_entries_and_their_errors():
    tokens = parse_tokens("ops=aaaaaaaaaaaaaaaa1:admin+evaluate, bbbbbbbbbbbbbbbb2:agent", "GROQPOLICY_TOKENS")
    assert [(t.name, sorted(t.scopes)) for t in tokens] == [("ops", ["admin", "evaluate"]), ("token2", ["agent"])]
    cases = {
        "short:admin": "GROQPOLICY_TOKENS: entry 1 (token1): token must be at least 16 characters of [A-Za-z0-9._~+/-]",
        "aaaaaaaaaaaaaaaa1:root": "GROQPOLICY_TOKENS: entry 1 (token1): scopes 'root': expected one or more of admin+evaluate+agent",
        "aaaaaaaaaaaaaaaa1": "GROQPOLICY_TOKENS: entry 1: expected [name=]token:scope+scope",
        "x y=aaaaaaaaaaaaaaaa1:admin": "GROQPOLICY_TOKENS: entry 1: name 'x y': expected [A-Za-z0-9._-]+",
        "aaaaaaaaaaaaaaaa1:": "GROQPOLICY_TOKENS: entry 1 (token1): scopes '': expected one or more of admin+evaluate+agent",
    }
    for entry, message in cases.items():
        with pytest.raises(TokenConfigError) as exc:
            parse_tokens(entry, "GROQPOLICY_TOKENS")
        assert str(exc.value) == message


def test_generated_tokens_file(tmp_path):
    settings = Settings(state_dir=tmp_path / "state")
    tokens = ensure_tokens(settings)
    path = tmp_path / "state" / "tokens"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert tokens.source == str(path)
    assert sorted(tokens.by_name("admin").scopes) == ["admin", "agent", "evaluate"]
    assert tokens.agent_token().name == "agent" and tokens.agent_token().scopes == {"agent"}
    # stable across restarts
    again = ensure_tokens(settings)
    assert again.by_name("admin").secret == tokens.by_name("admin").secret
    # a tokens file replaces the generated one
    f = tmp_path / "mine"
    f.write_text("# comment\nci=cccccccccccccccccc:evaluate\n")
    mine = ensure_tokens(Settings(state_dir=tmp_path / "state", tokens_file=f))
    assert len(mine) == 1 and mine.by_name("ci").scopes == {"evaluate"}
    with pytest.raises(TokenConfigError, match=r"^GROQPOLICY_TOKENS_FILE=.*/missing: No such file or directory$"):
        ensure_tokens(Settings(state_dir=tmp_path / "state", tokens_file=tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(TokenConfigError, match=r"no tokens configured"):
        ensure_tokens(Settings(state_dir=tmp_path / "state", tokens_file=empty))


def test_rate_spec():
    assert parse_rate("100/second") == ("second", 100)
    assert parse_rate(" 5 / minute ") == ("minute", 5)
    assert parse_rate("off") is None
    for bad in ("fast", "10/week", "0/second", "-1/second"):
        with pytest.raises(RateLimitSpecError, match=r"expected <n>/<second\|minute\|hour\|day> or off"):
            parse_rate(bad)


def test_requires_refuses_unknown_scopes():
    with pytest.raises(ValueError, match=r"requires: unknown scope\(s\) \['root'\]"):
        requires("root")
