"""http.send against a real local HTTP server, evaluated by the wasm evaluator (allowed URL, httpx
transport) and by `opa eval` (topdown): identical response documents."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bridge.opawasm import HostConfig, policy_from_files
from tests.wasm_helpers import build_wasm_bundle, bundle_files, opa_eval_one

POLICY = """package h
import rego.v1

get := http.send({"method": "get", "url": concat("", [input.base, "/json?q=1"])})
post := http.send({"method": "post", "url": concat("", [input.base, "/echo"]), "body": {"a": [1, 2]}})
text := http.send({"method": "get", "url": concat("", [input.base, "/text"])})
status := http.send({"method": "get", "url": concat("", [input.base, "/missing"])}).status_code
forced := http.send({"method": "get", "url": concat("", [input.base, "/text-json"]), "force_json_decode": true}).body
"""


class _Handler(BaseHTTPRequestHandler):
    def _reply(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response_only(code)  # no Date/Server headers: the replies are byte-identical
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Test", "yes")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/json"):
            self._reply(200, "application/json", json.dumps({"ok": True, "path": self.path}).encode())
        elif self.path == "/text":
            self._reply(200, "text/plain", b"hello")
        elif self.path == "/text-json":
            self._reply(200, "text/plain", b'{"n": 1}')
        else:
            self._reply(404, "application/json", b'{"error": "nope"}')

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        self._reply(201, "application/json", json.dumps({"got": json.loads(body or b"null")}).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.mark.parametrize("rule", ["get", "post", "text", "status", "forced"])
def test_http_send_matches_topdown(server, rule):
    src = {"h.rego": POLICY}
    b = build_wasm_bundle(src, ["h/get", "h/post", "h/text", "h/status", "h/forced"])
    p = policy_from_files(bundle_files(b), host=HostConfig(allowed_url_prefixes=(server + "/",)))
    got = p.evaluate(f"h/{rule}", {"base": server})
    want = opa_eval_one(src, None, f"data.h.{rule}", {"base": server})
    assert want.get("defined"), want
    assert got == want["value"]
