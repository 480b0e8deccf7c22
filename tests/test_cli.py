"""`groqpolicy` subcommands: success output and one-line errors with a hint and a non-zero exit."""

from __future__ import annotations

import http.server
import os
import stat
import subprocess
import sys
import threading

import pytest
import yaml

from bridge.opabundle.keys import load_signing_key
from controlplane.ops.client import RETRIES, ClientError, ControlPlaneClient
from tests.conftest import REPO_ROOT


def run_cli(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane.ops.cli", *args],
        capture_output=True, text=True, cwd=cwd or REPO_ROOT, env={**os.environ, **(env or {})}, timeout=120,
    )


def test_help_lists_every_job():
    out = run_cli("--help").stdout
    for cmd in ("up", "serve", "compile", "keys", "opa-config"):
        assert cmd in out


def test_keys_generate_writes_a_loadable_private_key(tmp_path):
    r = run_cli("keys", "generate", "--alg", "ES256", "--kid", "prod-1", "--out-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    private = tmp_path / "prod-1.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert (tmp_path / "prod-1.pub.pem").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    key = load_signing_key(private, kid="prod-1")
    assert key.alg == "ES256"
    assert f"GROQPOLICY_SIGNING_KEY_FILE={private}" in r.stdout


def test_keys_generate_refuses_to_overwrite(tmp_path):
    assert run_cli("keys", "generate", "--out-dir", str(tmp_path)).returncode == 0
    r = run_cli("keys", "generate", "--out-dir", str(tmp_path))
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and "already exists" in r.stderr


def test_compile_reports_revision_and_entrypoints():
    r = run_cli("compile")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("groqpolicy: revision groqpolicy-")
    assert "groqpolicy/policies/security_policies/decision" in r.stdout


def test_compile_errors_are_located_lines(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.rego").write_text("package broken\n\nallow if {\n")
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "broken.toml").write_text('name = "broken"\nsources = ["src"]\n')
    r = run_cli("compile", "--bundles-dir", str(defs), env={"GROQPOLICY_REGO_ROOT": str(tmp_path)})
    assert r.returncode == 1
    assert "broken: check failed" in r.stderr
    assert "src/broken.rego:" in r.stderr and "rego_parse_error" in r.stderr
    assert "Traceback" not in r.stderr


def test_compile_without_definitions_gives_hint(tmp_path):
    r = run_cli("compile", "--bundles-dir", str(tmp_path))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"error: no bundle definitions (*.toml) in {tmp_path}",
                                     "hint: create bundles/<name>.toml with name and sources"]


def test_opa_config_uses_configured_key(tmp_path):
    assert run_cli("keys", "generate", "--kid", "k9", "--out-dir", str(tmp_path)).returncode == 0
    r = run_cli("opa-config", "--agent-id", "edge-1",
                env={"GROQPOLICY_SIGNING_KEY_FILE": str(tmp_path / "k9.pem"), "GROQPOLICY_SIGNING_KID": "k9",
                     "GROQPOLICY_STATE_DIR": str(tmp_path / "state")})
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["bundles"]["groqpolicy"]["signing"]["keyid"] == "k9"
    assert cfg["labels"]["agent"] == "edge-1"


def test_bad_signing_key_file_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    r = run_cli("opa-config", env={"GROQPOLICY_SIGNING_KEY_FILE": str(bad)})
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_unknown_command_exits_non_zero():
    r = run_cli("frobnicate")
    assert r.returncode == 2


def test_bad_environment_value_is_one_line_error():
    r = run_cli("opa-config", env={"GROQPOLICY_PORT": "eighty"})
    assert r.returncode == 1
    assert r.stderr.startswith("error: GROQPOLICY_PORT='eighty': invalid literal")


class _Busy:
    """A loopback HTTP server answering each request with the next (status, headers) of a script
    (the last one repeated), and counting what it was asked."""

    def __init__(self, script: list[tuple[int, dict[str, str]]], code: str = "evaluation_saturated") -> None:
        outer = self
        self.asked = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                status, headers = script[min(outer.asked, len(script) - 1)]
                outer.asked += 1
                body = b'{"results": []}' if status == 200 else \
                    b'{"error": {"code": "%s", "message": "all threads are busy"}}' % code.encode()
                self.send_response(status)
                for k, v in {"content-type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_client_asks_again_when_the_control_plane_says_when():

    busy = _Busy([(503, {"retry-after": "0"}), (429, {"retry-after": "0"}), (200, {})])
    try:
        with ControlPlaneClient(busy.url) as api:
            assert api.post("/api/v1/evaluate/batch", {}) == {"results": []}
        assert busy.asked == 3  # nothing of a 503/429 request was done: asked again as told
    finally:
        busy.close()
    always = _Busy([(503, {"retry-after": "0"})])
    try:
        with ControlPlaneClient(always.url) as api, pytest.raises(ClientError) as err:
            api.post("/api/v1/evaluate/batch", {})
        assert always.asked == RETRIES + 1  # a bounded number of times, then the error with its hint
        assert "HTTP 503: all threads are busy" in str(err.value) and "busy" in err.value.hint
    finally:
        always.close()
    down = _Busy([(503, {})])  # no Retry-After: no promise to keep, reported at once
    try:
        with ControlPlaneClient(down.url) as api, pytest.raises(ClientError):
            api.post("/api/v1/evaluate/batch", {})
        assert down.asked == 1
    finally:
        down.close()
    # any other 503 may come after part of the request took effect (a policy stored, model calls
    # paid): never asked again, whatever Retry-After says
    partial = _Busy([(503, {"retry-after": "0"})], code="nats_unavailable")
    try:
        with ControlPlaneClient(partial.url) as api, pytest.raises(ClientError) as err:
            api.post("/api/v1/policies", {})
        assert partial.asked == 1 and "busy" not in err.value.hint
    finally:
        partial.close()
