"""Hostile input on every edge: the corpus in `tests/hostile_corpus.py` replayed on every route of
the control plane (taken from its OpenAPI document), on the gateway and on every NATS subject
(`policy.evaluate`, `groq.infer.<tier>`), against real processes: NATS, an inference worker and a
gateway as child processes, the control plane on loopback. No answer may be a 5xx, and afterwards
every process still runs and still answers a good request.

Also here: the limits themselves (JSON depth, header numbers) and the request id a 5xx carries
into its body, its header and its log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest

from bridge.kernel.errors import ERROR_CODE_HEADER, REQUEST_ID_HEADER, BadRequest
from bridge.kernel.untrusted import MAX_JSON_DEPTH, check_json_depth, header_number, json_depth_exceeds
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH, ROUTABLE_TIERS
from controlplane.infra.processes import free_port
from tests.bridge_helpers import BRIDGE_HEADERS, BRIDGE_TOKEN, REPO_ROOT, gateway_on, spawn_worker, wait_for_workers
from tests.controlplane_helpers import ADMIN_HEADERS, make_settings, running_control_plane
from tests.hostile_corpus import BODIES, HEADERS, INGESTION, PATH_VALUES, QUERY_VALUES, Case

pytestmark = pytest.mark.slow
_WRITE_METHODS = {"post", "put", "patch", "delete"}
_NATS_MAX_PAYLOAD = 1024 * 1024
GOOD_EVALUATION = {"input_context": {"principal": {"id": "svc"}, "amount": 5}, "policy_types": ["risk_management"],
                   "performance_tier": "nano", "constitutional_hash": CONSTITUTIONAL_HASH}


# -- the limits ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,deep", [
    (b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, False),
    (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), True),
    (b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1), True),
    (b"[" * 100_000, True),  # unterminated still counts
    (json.dumps({"s": "[" * 10_000, "t": "\\\"[[[" * 500}).encode(), False),  # brackets in strings do not nest
    (json.dumps([[i] for i in range(10_000)]).encode(), False),  # many brackets, depth 2
    (b'["\\"' + b"[" * 300 + b'"]', False),  # an escaped quote does not end the string
])
def test_json_depth_is_measured_outside_strings(text, deep):
    assert json_depth_exceeds(text) is deep


def _depth(value: Any) -> int:
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return (1 + max((_depth(c) for c in children), default=0)) if isinstance(value, dict | list) else 0


def _random_document(rng: random.Random, depth: int) -> Any:
    """A document whose deepest path has exactly `depth` levels, with strings full of brackets and escapes."""
    if depth == 0:
        return rng.choice([1, "x]}", '"[{\\', None, 2.5, "plain"])
    kids = [_random_document(rng, rng.randrange(min(depth, 3))) for _ in range(rng.randrange(3))]  # shallow siblings
    kids.insert(rng.randrange(len(kids) + 1), _random_document(rng, depth - 1))
    return kids if rng.random() < 0.5 else {f"k{i}]\"{{": kid for i, kid in enumerate(kids)}


@pytest.mark.parametrize("seed", range(40))
def test_json_depth_matches_the_documents_own_depth(seed):
    rng = random.Random(seed)
    doc = _random_document(rng, rng.choice([MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 3, 200]))
    text = json.dumps(doc).encode()
    assert json_depth_exceeds(text) is (_depth(doc) > MAX_JSON_DEPTH)


@pytest.mark.parametrize("text,deep", [
    (b'{"a": [1, 2', False),  # truncated and shallow: left to the decoder to say so
    (b"[" * (MAX_JSON_DEPTH + 1), True),
    (b"]" * 500 + b"[" * 10, False),
    (b"[]" * 10_000, False),
])
def test_broken_json_is_judged_by_its_unclosed_brackets(text, deep):
    assert json_depth_exceeds(text) is deep


def test_too_deep_is_a_400_naming_the_limit():
    with pytest.raises(BadRequest) as info:
        check_json_depth(b"[" * 1000, "request")
    assert info.value.status == 400 and info.value.code == "json_too_deep"
    assert info.value.message == f"request: JSON nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects"


@pytest.mark.parametrize("value,message", [
    ("9" * 5000, "Prefer: wait: 5000 digits is too many (at most 9)"),
    ("-1", "Prefer: wait: want a non-negative integer, got '-1'"),
    ("1e9", "Prefer: wait: want a non-negative integer, got '1e9'"),
])
def test_header_numbers_are_bounded(value, message):
    with pytest.raises(BadRequest) as info:
        header_number("Prefer: wait", value)
    assert info.value.status == 400 and info.value.message == message
    assert header_number("Prefer: wait", " 30 ") == 30


# -- the running system ------------------------------------------------------------------------------

@dataclass
class System:
    cp: httpx.Client
    gateway: httpx.Client
    nats_url: str
    services: Any
    children: dict[str, subprocess.Popen]


def _spawn_gateway(nats_url: str, port: int, log_path: Path) -> subprocess.Popen:
    token_file = log_path.parent / "bridge-token"
    token_file.write_text(BRIDGE_TOKEN)
    env = {**os.environ, "NATS_URL": nats_url, "PYTHONPATH": str(REPO_ROOT), "GROQPOLICY_BRIDGE_TOKEN_FILE": str(token_file)}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "bridge.inference.gateway", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True)


def _wait_healthy(client: httpx.Client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{client.base_url}: not healthy")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def system(tmp_path_factory, nats_server_module, emu_module) -> Iterator[System]:
    tmp = tmp_path_factory.mktemp("hostile")
    url = nats_server_module.extra["url"]
    worker = spawn_worker(url, emu_module.url, tmp / "worker.log")
    port = free_port()
    gateway = _spawn_gateway(url, port, tmp / "gateway.log")
    children = {"worker": worker, "gateway": gateway, "nats": nats_server_module.proc}
    try:
        asyncio.run(wait_for_workers(url, 1))
        settings = make_settings(tmp / "state", compile_on_start=True, nats_url=url, long_poll_max_s=1)
        with running_control_plane(settings) as services, \
                httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=60) as cp, \
                httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=BRIDGE_HEADERS, timeout=60) as gw:
            _wait_healthy(gw)
            yield System(cp, gw, url, services, children)
    finally:
        for proc in (worker, gateway):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _send(client: httpx.Client, method: str, path: str, case: Case, params: Any = None) -> str:
    """The status as text, or what went wrong on the connection."""
    headers = {k: v.encode() for k, v in case.headers.items()}
    try:
        r = client.request(method.upper(), path, content=case.body or None, headers=headers, params=params)
    except httpx.TransportError as exc:
        return f"connection: {type(exc).__name__}"
    return str(r.status_code)


# the routes the OpenAPI document leaves out (the dashboard and the schema's own pages)
UNDOCUMENTED = [("get", "/", [], []), ("get", "/dashboard/verify", [], []), ("get", "/dashboard/login", [], ["token"]),
                ("post", "/dashboard/login", [], []), ("post", "/dashboard/logout", [], []),
                ("get", "/schema/{path}", ["path"], []), ("get", "/schema/swagger", [], [])]
FORM = Case("form body", b"token=%ZZ%00&token=" + b"a" * 5000, {"content-type": "application/x-www-form-urlencoded"})


def _routes(cp: httpx.Client) -> list[tuple[str, str, list[str], list[str]]]:
    """(method, path template, path parameters, query parameters) of every route."""
    doc = cp.get("/schema/openapi.json").json()
    routes = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            params = op.get("parameters", [])
            routes.append((method, path, [p["name"] for p in params if p["in"] == "path"],
                           [p["name"] for p in params if p["in"] == "query"]))
    return routes + UNDOCUMENTED


def _fill(path: str, names: list[str], value: str) -> str:
    for name in names:
        path = path.replace("{" + name + "}", value)
    return path


def _server_errors(results: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(what, status) for what, status in results if not status.isdigit() or int(status) >= 500]


def test_no_5xx_on_any_control_plane_route(system):
    routes = _routes(system.cp)
    paths = {p for _, p, _, _ in routes}
    assert {"/api/v1/evaluate", "/api/v1/policies", "/logs", "/status", "/bundles/{name}"} <= paths
    results: list[tuple[str, str]] = []
    for method, path, path_params, query_params in routes:
        target = _fill(path, path_params, PATH_VALUES[0] if "rule_id" in path_params else "groqpolicy")
        cases = [*BODIES, FORM] if method in _WRITE_METHODS else [Case("no body")]
        for case in [*cases, *HEADERS]:
            results.append((f"{method} {target} [{case.name}]", _send(system.cp, method, target, case)))
        for value in PATH_VALUES if path_params else []:
            odd = _fill(path, path_params, value)
            results.append((f"{method} {odd}", _send(system.cp, method, odd, Case("path"))))
        for name in query_params:
            for value in QUERY_VALUES:
                results.append((f"{method} {target}?{name}={value[:20]!r}",
                                _send(system.cp, method, target, Case("query"), params={name: value})))
    for method, path in [("get", "/nowhere"), ("patch", "/api/v1/evaluate"), ("put", "/health"), ("get", "/api/v1/evaluate"),
                         ("get", "/bundles/groqpolicy/../../etc/passwd"), ("get", "/" + "a/" * 2000)]:
        results.append((f"{method} {path[:40]}", _send(system.cp, method, path, Case("unknown"))))
    repeated = [("is_active", "true")] * 1000 + [("limit", "1")] * 1000
    for path in ("/api/v1/policies", "/api/v1/opa/decisions", "/api/v1/audit"):
        results.append((f"get {path} with 2000 parameters", _send(system.cp, "get", path, Case("many"), params=repeated)))
    assert len(results) > 1000
    assert _server_errors(results) == []
    # the deep documents were refused by the limit, not by luck further down
    r = system.cp.post("/api/v1/evaluate", content=BODIES[0].body, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "json_too_deep")
    r = system.cp.get("/bundles/groqpolicy", headers={"prefer": "wait=" + "9" * 5000})
    assert r.status_code == 400 and "5000 digits" in r.json()["error"]["message"]


def test_ingestion_shapes_are_4xx_and_leave_the_read_side_working(tmp_path, nats_server):
    settings = make_settings(tmp_path / "state", nats_url=nats_server.extra["url"])
    with running_control_plane(settings), httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=60) as cp:
        results = [(f"post {path} [{case.name}]", _send(cp, "post", path, case)) for path, case in INGESTION]
        results += [(f"get {path}", _send(cp, "get", path, Case("read"))) for path in ("/api/v1/opa/agents", "/api/v1/opa/decisions", "/")]
    assert _server_errors(results) == []


def test_no_5xx_on_the_gateway(system):
    results = []
    for tier in [*ROUTABLE_TIERS, "unknown", "a" * 3000]:
        for case in [*BODIES, *HEADERS]:
            results.append((f"POST /v1/infer/{tier[:20]} [{case.name}]", _send(system.gateway, "post", f"/v1/infer/{tier}", case)))
    for path in ["/health", "/metrics", "/v1/models", "/nowhere", "/v1/infer/"]:
        for method in ["get", "post", "put", "delete"]:
            for case in HEADERS:
                results.append((f"{method} {path} [{case.name}]", _send(system.gateway, method, path, case)))
    assert _server_errors(results) == []
    r = system.gateway.post("/v1/infer/fast", content=BODIES[0].body)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "json_too_deep")


def _raw(port: int, request: bytes) -> bytes:
    """One request on a raw socket (what httpx refuses to send): the status line back."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("head", [
    b"POST /v1/infer/fast HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    b"POST /v1/infer/fast HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n{}",
    b"POST /v1/infer/fast HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"question\": ",  # truncated body
    b"POST /v1/infer/fast HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Bad\x00Header: 1\r\n\r\n",
])
def test_malformed_http_never_answers_5xx(system, head):
    for port in (system.gateway.base_url.port, system.cp.base_url.port):
        status = _raw(port, head.replace(b"/v1/infer/fast", b"/api/v1/evaluate") if port == system.cp.base_url.port else head)
        assert not re.match(rb"HTTP/1\.[01] 5", status), (port, status)


async def _nats_results(url: str) -> list[tuple[str, str]]:
    nc = await nats.connect(url)
    results = []
    budgets = [{}, {"X-Groqpolicy-Budget-Ms": "1e999"}, {"X-Groqpolicy-Budget-Ms": "nan"},
               {"X-Groqpolicy-Budget-Ms": "9" * 5000}, {REQUEST_ID_HEADER: "\u00e9" * 500}]
    try:
        for subject in ["policy.evaluate", *(f"groq.infer.{t}" for t in ROUTABLE_TIERS)]:
            for case in BODIES:
                if len(case.body) > _NATS_MAX_PAYLOAD:
                    continue
                for headers in budgets if subject.startswith("groq.") else budgets[:1] + budgets[-1:]:
                    try:
                        msg = await nc.request(subject, case.body, timeout=20, headers=headers or None)
                    except Exception as exc:  # noqa: BLE001 - a missing answer is a finding like a 5xx
                        results.append((f"{subject} [{case.name}] {list(headers)}", f"no answer: {type(exc).__name__}"))
                        continue
                    code = (msg.headers or {}).get(ERROR_CODE_HEADER, "200")
                    results.append((f"{subject} [{case.name}] {list(headers)}", code))
    finally:
        await nc.close()
    return results


def test_no_5xx_on_any_nats_subject(system):
    results = asyncio.run(_nats_results(system.nats_url))
    assert len(results) > 150
    assert _server_errors(results) == []


def test_every_process_still_runs_and_answers(system):
    for name, proc in system.children.items():
        assert proc.poll() is None, f"{name} exited with {proc.returncode}"
    assert system.cp.get("/health").json()["nats"] is True
    r = system.cp.post("/api/v1/evaluate", json=GOOD_EVALUATION)
    assert r.status_code == 200 and r.json()["decision"] in {"allow", "deny", "review"}
    assert system.gateway.get("/health").status_code == 200

    async def over_nats() -> tuple[dict, dict]:
        nc = await nats.connect(system.nats_url)
        try:
            evaluated = await nc.request("policy.evaluate", msgspec.json.encode(GOOD_EVALUATION), timeout=20)
            judged = await nc.request("groq.infer.fast", msgspec.json.encode(
                {"question": "Is this fine?", "context": {"t": "x"}, "constitutional_hash": CONSTITUTIONAL_HASH}), timeout=20)
            return msgspec.json.decode(evaluated.data), msgspec.json.decode(judged.data)
        finally:
            await nc.close()

    evaluated, judged = asyncio.run(over_nats())
    assert evaluated["decision"] in {"allow", "deny", "review"} and judged["decision"] in {"allow", "deny", "review"}


# -- a 5xx names its request id (body, header, log line) ------------------------------------------

def test_an_unexpected_error_is_a_500_with_a_request_id_in_body_header_and_log(system, monkeypatch, caplog):
    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("boom in list")

    monkeypatch.setattr(system.services.policies, "list", broken)
    with caplog.at_level(logging.ERROR, logger="controlplane.infra.edge"):
        r = system.cp.get("/api/v1/policies")
        mine = system.cp.get("/api/v1/policies", headers={REQUEST_ID_HEADER: "my-trace-42"})
    assert r.status_code == 500
    rid = r.headers[REQUEST_ID_HEADER]
    assert r.json()["error"]["request_id"] == rid and "boom" not in r.text
    assert mine.headers[REQUEST_ID_HEADER] == "my-trace-42" and mine.json()["error"]["request_id"] == "my-trace-42"
    logged = [rec for rec in caplog.records if rid in rec.getMessage()]
    assert logged and logged[0].exc_info is not None and "GET /api/v1/policies" in logged[0].getMessage()
    assert any("my-trace-42" in rec.getMessage() for rec in caplog.records)
    # a 4xx carries the id in its header only
    bad = system.cp.post("/api/v1/evaluate", content=b"[" * 500)
    assert bad.status_code == 400 and bad.headers[REQUEST_ID_HEADER] and "request_id" not in bad.json()["error"]


def test_a_nats_5xx_carries_a_request_id_and_is_logged(system, monkeypatch, caplog):
    async def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("boom in evaluate")

    monkeypatch.setattr(system.services.runtime.pipeline, "evaluate", broken)

    async def ask() -> Any:
        nc = await nats.connect(system.nats_url)
        try:
            return await nc.request("policy.evaluate", msgspec.json.encode(GOOD_EVALUATION), timeout=20,
                                    headers={REQUEST_ID_HEADER: "nats-trace-7"})
        finally:
            await nc.close()

    with caplog.at_level(logging.WARNING):
        msg = asyncio.run(ask())
    assert msg.headers[ERROR_CODE_HEADER] == "500" and msg.headers[REQUEST_ID_HEADER] == "nats-trace-7"
    error = msgspec.json.decode(msg.data)["error"]
    assert error["request_id"] == "nats-trace-7" and "boom" not in error["message"] and "nats-trace-7" in error["message"]
    assert any("nats-trace-7" in rec.getMessage() and "policy.evaluate" in rec.getMessage() and rec.exc_info
               for rec in caplog.records)


async def test_a_gateway_5xx_carries_a_request_id_and_is_logged(nats_server, caplog):
    url = nats_server.extra["url"]  # no worker serves this NATS: the gateway answers 503
    async with gateway_on(url) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers=BRIDGE_HEADERS, timeout=30) as client:
            with caplog.at_level(logging.WARNING, logger="groqpolicy.gateway"):
                r = await client.post("/v1/infer/fast", json={"question": "q?", "constitutional_hash": CONSTITUTIONAL_HASH})
    assert r.status_code == 503
    rid = r.headers[REQUEST_ID_HEADER]
    assert r.json()["error"]["request_id"] == rid
    assert any(rid in rec.getMessage() and "503" in rec.getMessage() for rec in caplog.records)
