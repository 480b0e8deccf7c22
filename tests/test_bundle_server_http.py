"""The bundle service, decision-log and status endpoints over real HTTP (uvicorn on loopback)."""

from __future__ import annotations

import gzip
import threading
import time

import httpx
import pytest
import yaml

from controlplane.bundles.controllers import BUNDLE_MEDIA_TYPE, parse_if_none_match, parse_wait
from tests.controlplane_helpers import ADMIN_HEADERS, gzip_json, make_settings, running_control_plane


@pytest.fixture
def cp(tmp_path):
    settings = make_settings(tmp_path / "state")
    with running_control_plane(settings) as services:
        with httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=15) as client:
            yield services, client


def test_prefer_and_if_none_match_parsing():
    assert parse_wait("modes=snapshot,delta;wait=60") == 60
    assert parse_wait("modes=snapshot,delta") is None
    assert parse_wait(None) is None
    assert parse_if_none_match('"a", "b"') == {'"a"', '"b"'}
    assert parse_if_none_match("") == set()


def test_unknown_bundle_is_404_with_json_error(cp):
    _, client = cp
    r = client.get("/bundles/nope")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "bundle 'nope': no active revision"


def test_unknown_target_is_404(cp):
    services, client = cp
    services.store.activate("b", "r1", {"rego": b"one"})
    r = client.get("/bundles/b", params={"target": "plan"})
    assert r.status_code == 404
    assert "unknown" in r.json()["error"]["message"]


def test_download_has_strong_etag_and_opa_media_type_then_304(cp):
    services, client = cp
    services.store.activate("b", "r1", {"rego": b"bundle-bytes-1", "wasm": b"wasm-bytes-1"})
    r = client.get("/bundles/b")
    assert r.status_code == 200
    assert r.content == b"bundle-bytes-1"
    assert r.headers["content-type"] == BUNDLE_MEDIA_TYPE
    etag = r.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith('W/')
    assert client.get("/bundles/b", params={"target": "wasm"}).content == b"wasm-bytes-1"
    again = client.get("/bundles/b", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    # OPA sends superseded ETags too, comma-separated: a match anywhere means "unchanged"
    several = client.get("/bundles/b", headers={"If-None-Match": f'"old", {etag}'})
    assert several.status_code == 304
    stale = client.get("/bundles/b", headers={"If-None-Match": '"old"'})
    assert stale.status_code == 200


def test_long_poll_answers_the_moment_a_revision_is_activated(cp):
    services, client = cp
    services.store.activate("b", "r1", {"rego": b"v1"})
    etag = client.get("/bundles/b").headers["etag"]
    result: dict = {}

    def poll() -> None:
        t0 = time.monotonic()
        resp = client.get("/bundles/b", headers={"If-None-Match": etag, "Prefer": "modes=snapshot,delta;wait=20"})
        result.update(status=resp.status_code, body=resp.content, elapsed=time.monotonic() - t0, at=time.monotonic())

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.5)
    assert t.is_alive(), "a long poll with an unchanged ETag must be held"
    activated_at = time.monotonic()
    services.store.activate("b", "r2", {"rego": b"v2"})
    t.join(timeout=10)
    assert result["status"] == 200 and result["body"] == b"v2"
    assert result["at"] - activated_at < 1.0


def test_long_poll_times_out_with_304(cp):
    services, client = cp
    services.store.activate("b", "r1", {"rego": b"v1"})
    etag = client.get("/bundles/b").headers["etag"]
    t0 = time.monotonic()
    r = client.get("/bundles/b", headers={"If-None-Match": etag, "Prefer": "modes=snapshot,delta;wait=1"})
    assert r.status_code == 304
    assert 0.9 <= time.monotonic() - t0 < 5


def test_long_poll_ends_when_its_client_goes_away(cp):
    services, client = cp
    services.store.activate("b", "r1", {"rego": b"v1"})
    etag = client.get("/bundles/b").headers["etag"]
    with httpx.Client(base_url=str(client.base_url), headers=client.headers, timeout=0.5) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            impatient.get("/bundles/b", headers={"If-None-Match": etag, "Prefer": "modes=snapshot,delta;wait=60"})
    deadline = time.monotonic() + 5
    while services.store.waiting("b") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert services.store.waiting("b") == 0, "a disconnected long poll must not wait out its 60 s"


def test_decision_logs_gzip_roundtrip_and_filters(cp):
    _, client = cp
    events = [
        {"decision_id": "d1", "path": "groqpolicy/policies/x/decision", "result": {"decision": "allow"}, "labels": {"id": "a1"}},
        {"decision_id": "d2", "path": "other", "result": 1, "labels": {"id": "a2"}},
    ]
    r = client.post("/logs", content=gzip_json(events), headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 204
    got = client.get("/api/v1/opa/decisions").json()
    assert got["total"] == 2 and [e["decision_id"] for e in got["decisions"]] == ["d2", "d1"]
    assert [e["decision_id"] for e in client.get("/api/v1/opa/decisions", params={"path": "other"}).json()["decisions"]] == ["d2"]
    assert client.get("/api/v1/opa/decisions", params={"agent_id": "a1"}).json()["decisions"][0]["decision_id"] == "d1"


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"not gzip", {"Content-Encoding": "gzip"}, 400, "body: invalid gzip data"),
        (gzip.compress(b"{not json"), {"Content-Encoding": "gzip"}, 400, "decision log batch: invalid JSON"),
        (gzip.compress(b'{"a": 1}'), {"Content-Encoding": "gzip"}, 400,
         "expected a JSON array of events (Expected `array`, got `object`)"),
        (gzip.compress(b"[]")[:-6], {"Content-Encoding": "gzip"}, 400, "body: truncated gzip data"),
        (b"[]", {"Content-Encoding": "br"}, 400, "Content-Encoding: unsupported 'br'"),
    ],
    ids=["bad-gzip", "bad-json", "not-array", "truncated", "brotli"],
)
def test_bad_decision_log_uploads_get_clear_errors_and_store_nothing(cp, body, headers, status, message):
    services, client = cp
    r = client.post("/logs", content=body, headers=headers)
    assert r.status_code == status
    assert message in r.json()["error"]["message"]
    assert services.decision_logs.total == 0


def test_gzip_bomb_is_refused(tmp_path):
    settings = make_settings(tmp_path / "state", max_log_body_bytes=1024)
    with running_control_plane(settings) as services, httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS) as client:
        bomb = gzip.compress(b"[" + b" " * 10_000 + b"]")
        r = client.post("/logs", content=bomb, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413
        assert "exceeds the limit of 1024" in r.json()["error"]["message"]
        assert services.decision_logs.total == 0


def test_decision_logs_survive_restart(tmp_path):
    settings = make_settings(tmp_path / "state")
    with running_control_plane(settings), httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS) as client:
        client.post("/logs", content=gzip_json([{"decision_id": "keep-me"}]), headers={"Content-Encoding": "gzip"})
    settings2 = make_settings(tmp_path / "state")
    with running_control_plane(settings2), httpx.Client(base_url=settings2.base_url, headers=ADMIN_HEADERS) as client:
        assert client.get("/api/v1/opa/decisions").json()["decisions"][0]["decision_id"] == "keep-me"


def test_status_is_kept_per_agent_and_queryable(cp):
    _, client = cp
    doc = {
        "labels": {"id": "agent-7", "version": "1.22.3"},
        "bundles": {"groqpolicy": {"name": "groqpolicy", "active_revision": "r9", "code": "bundle_error",
                                   "message": "verification failed", "errors": ["digest mismatch"]}},
        "plugins": {"bundle": {"state": "OK"}},
    }
    assert client.post("/status/", json=doc).status_code == 204
    agents = client.get("/api/v1/opa/agents").json()
    assert agents[0]["id"] == "agent-7"
    assert agents[0]["bundles"][0] == {"name": "groqpolicy", "active_revision": "r9", "code": "bundle_error",
                                        "message": "verification failed", "errors": ["digest mismatch"],
                                        "last_successful_activation": "", "last_successful_download": "",
                                        "last_request": ""}
    one = client.get("/api/v1/opa/agents/agent-7", params={"history": True}).json()
    assert one["status"]["labels"]["id"] == "agent-7" and len(one["history"]) == 1
    assert client.get("/api/v1/opa/agents/ghost").status_code == 404
    assert client.post("/status", content=b"[1]").status_code == 400


def test_opa_config_is_ready_to_run(cp):
    services, client = cp
    cfg = yaml.safe_load(client.get("/api/v1/opa/config", params={"agent_id": "a1"}).text)
    kid = services.signing_key.kid
    bundle = cfg["bundles"]["groqpolicy"]
    assert bundle["signing"]["keyid"] == kid
    assert bundle["polling"]["long_polling_timeout_seconds"] == 60
    assert bundle["resource"] == "bundles/groqpolicy"
    assert cfg["keys"][kid]["key"] == services.signing_key.verification_key().public_pem
    assert cfg["keys"][kid]["algorithm"] == services.signing_key.alg
    assert cfg["services"]["groqpolicy"]["url"] == services.settings.base_url
    assert cfg["decision_logs"]["service"] == "groqpolicy" and cfg["status"]["service"] == "groqpolicy"
    assert cfg["nd_builtin_cache"] is True
    as_json = client.get("/api/v1/opa/config", params={"format": "json"}).json()
    assert as_json["bundles"]["groqpolicy"]["signing"]["keyid"] == kid
    assert client.get("/api/v1/opa/config", params={"format": "xml"}).status_code == 400
    assert client.get("/api/v1/opa/config", params={"min_delay_s": 30, "max_delay_s": 5}).status_code == 400


def test_health_and_openapi(cp):
    _, client = cp
    assert client.get("/health").json()["constitutional_hash"] == "cdd01ef066bc6cf2"
    paths = client.get("/schema/openapi.json").json()["paths"]
    for p in ("/bundles/{name}", "/logs", "/status", "/api/v1/opa/config", "/api/v1/opa/decisions", "/api/v1/opa/agents"):
        assert p in paths, p
