"""The CLI's client commands: one-line errors with a hint and exit code 1, and success against a real control plane."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from controlplane.infra.processes import free_port
from tests.conftest import REPO_ROOT
from tests.controlplane_helpers import ADMIN_TOKEN, EVALUATE_TOKEN, make_settings, running_control_plane


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controlplane.ops.cli", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={**os.environ, **(env or {})}, timeout=120)


def one_error(r: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    hint = lines[1] if len(lines) > 1 else ""
    assert len(lines) <= 2 and (not hint or hint.startswith("hint: "))
    return lines[0], hint


@pytest.mark.parametrize(
    ("args", "error", "hint"),
    [
        (["evaluate"], "error: nothing to evaluate", "hint: pass --context '{...}' or --file contexts.jsonl"),
        (["evaluate", "--context", "{nope"], "error: --context: invalid JSON", "quote the JSON"),
        (["evaluate", "--context", "[1]"], "error: --context: expected a JSON object", ""),
        (["evaluate", "--file", "/nonexistent/contexts.jsonl"], "error: /nonexistent/contexts.jsonl: cannot read", "JSON-lines"),
        (["policies", "create", "/nonexistent/p.rego", "--type", "security_policies"], "error: /nonexistent/p.rego: cannot read", ".rego"),
    ],
    ids=["no-context", "bad-json", "not-object", "missing-file", "missing-rego"],
)
def test_input_errors_are_one_line_with_a_hint(args, error, hint):
    first, second = one_error(run_cli(*args, "--url", "http://127.0.0.1:1"))
    assert first.startswith(error)
    assert hint in second


def test_bad_line_in_contexts_file_is_located(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"a": 1}\n{broken\n')
    first, _ = one_error(run_cli("evaluate", "--file", str(f), "--url", "http://127.0.0.1:1"))
    assert first.startswith(f"error: {f}:2: invalid JSON")


def test_no_running_system_names_the_fix():
    first, hint = one_error(run_cli("agents", "--url", f"http://127.0.0.1:{free_port()}"))
    assert first.startswith("error: cannot reach the control plane at http://127.0.0.1:")
    assert hint == "hint: start the system with `make run` (or `groqpolicy up`), or pass --url"


def test_unreachable_nats_for_policy_evaluate():
    first, hint = one_error(run_cli("evaluate", "--via", "nats", "--nats-url", f"nats://127.0.0.1:{free_port()}",
                                    "--context", "{}"))
    assert first.startswith("error: cannot reach NATS at nats://127.0.0.1:")
    assert hint == "hint: start the system with `make run`, or pass --nats-url"


def test_stop_without_a_running_system(tmp_path):
    first, hint = one_error(run_cli("stop", "--state-dir", str(tmp_path)))
    assert first == f"error: no running system recorded in {tmp_path / 'groqpolicy.pid'}"
    assert hint == "hint: start one with `make run` or `groqpolicy up`"


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("state"))
    with running_control_plane(settings) as services:
        yield settings, services


def test_wrong_token_and_wrong_scope(cp):
    settings, _ = cp
    first, hint = one_error(run_cli("bundles", "--url", settings.base_url, "--token", "x" * 20))
    assert "HTTP 401" in first and "GROQPOLICY_TOKEN" in hint
    first, hint = one_error(run_cli("policies", "create", str(REPO_ROOT / "rego/policies/risk_management/policy.rego"),
                                    "--type", "risk_management", "--url", settings.base_url, "--token", EVALUATE_TOKEN))
    assert "HTTP 403" in first and "scope" in hint


def test_policy_create_with_bad_rego_shows_the_location(cp, tmp_path):
    settings, _ = cp
    bad = tmp_path / "bad.rego"
    bad.write_text("package x\n\ndecision := {\n")
    first, _ = one_error(run_cli("policies", "create", str(bad), "--type", "risk_management",
                                 "--url", settings.base_url, "--token", ADMIN_TOKEN))
    assert "HTTP 422" in first and "opa_policy:" in first


def test_evaluate_and_list_succeed(cp):
    settings, _ = cp
    base = ["--url", settings.base_url, "--token", ADMIN_TOKEN]
    r = run_cli("evaluate", "--json", "--context", json.dumps({"principal": {"id": "cli"}}), *base)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["constitutional_hash"] == "cdd01ef066bc6cf2"
    r = run_cli("policies", "list", *base)
    assert r.returncode == 0 and r.stdout.startswith("no policies stored yet")
    r = run_cli("audit", "tail", "-n", "1", *base)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1


def test_bundles_and_agents_print_tables(cp):
    settings, services = cp
    base = ["--url", settings.base_url, "--token", ADMIN_TOKEN]
    r = run_cli("agents", *base)
    assert r.returncode == 0 and r.stdout == "no OPA agent has reported status yet\n"

    services.store.activate("cli-demo", "cli-demo-rev", {"rego": b"rego", "wasm": b"wasm!"}, signed_by="unit-key")
    r = run_cli("bundles", *base)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["bundle    target  revision      bytes  etag             signed by  activated",
                         "--------  ------  ------------  -----  ---------------  ---------  -------------------"]
    assert any(re.fullmatch(r'cli-demo  wasm    cli-demo-rev  5      "[0-9a-f]{13}"  unit-key   \d{4}-\d\d-\d\d \d\d:\d\d:\d\d',
                            line) for line in lines[2:]), lines

    services.statuses.record({"labels": {"id": "opa-1", "agent": "edge-1"},
                              "bundles": {"cli-demo": {"active_revision": "cli-demo-rev"},
                                          "other": {"code": "bundle_error", "message": "m" * 80}}})
    r = run_cli("agents", *base)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "agent   bundle    active revision  status" + " " * 70 + "last seen"
    assert re.fullmatch("edge-1  cli-demo  cli-demo-rev     ok" + " " * 74 + r"\d\d:\d\d:\d\d", lines[2]), lines
    assert re.fullmatch("edge-1  other" + " " * 22 + "bundle_error: " + "m" * 60 + r"  \d\d:\d\d:\d\d", lines[3]), lines
