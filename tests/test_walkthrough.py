"""The README's ten-minute walkthrough, end to end, against a system started the way the README does
(`make run`), with its state in a temporary directory and its ports chosen at random.

The policy is taken from the README itself, so the README cannot drift from what works.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from controlplane.infra.processes import free_port
from controlplane.ops.client import local_token
from tests.conftest import REPO_ROOT
from tests.controlplane_helpers import get_together

pytestmark = pytest.mark.slow

CONTEXT = {"principal": {"id": "svc-notes"}, "text": "call Ann on 555-1234"}


def readme_policy() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Ten-minute walkthrough", 1)[1]
    block = re.search(r"```rego\n(.*?)```", section, re.S)
    assert block, "the walkthrough must show its policy in a ```rego block"
    return "\n".join(line[3:] if line.startswith("   ") else line for line in block.group(1).splitlines()) + "\n"


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    root = tmp_path_factory.mktemp("walkthrough")
    ports = {k: free_port() for k in ("cp", "agent", "nats", "gateway")}
    env = {
        # GROQPOLICY_PROCESSES left to its default (one per core): the walkthrough, shadows included,
        # holds for a deployment of several control-plane processes on one port
        **{k: v for k, v in os.environ.items() if k not in ("GROQ_API_KEY", "MAKEFLAGS", "MFLAGS", "GROQPOLICY_PROCESSES")},
        "GROQPOLICY_STATE_DIR": str(root / "state"),
        "GROQPOLICY_PORT": str(ports["cp"]),
        "GROQPOLICY_AGENT_PORT": str(ports["agent"]),
        "GROQPOLICY_NATS_PORT": str(ports["nats"]),
        "GROQPOLICY_GATEWAY_PORT": str(ports["gateway"]),
    }
    log = root / "make-run.log"
    proc = subprocess.Popen(["make", "run"], cwd=REPO_ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while "Ctrl-C stops everything." not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"make run did not come up:\n{log.read_text()[-4000:]}")
        time.sleep(0.3)
    info = {"root": root, "env": env, "ports": ports, "proc": proc, "log": log,
            "cp": f"http://127.0.0.1:{ports['cp']}", "agent": f"http://127.0.0.1:{ports['agent']}",
            "nats": f"nats://127.0.0.1:{ports['nats']}"}
    try:
        yield info
    finally:
        if proc.poll() is None:
            subprocess.run([sys.executable, "-m", "controlplane.ops.cli", "stop"], cwd=REPO_ROOT, env=env, timeout=90)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def cli(system, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**system["env"], "GROQPOLICY_URL": system["cp"], "NATS_URL": system["nats"]}
    r = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "groqpolicy"), *args], cwd=system["root"], env=env,
                       capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, f"groqpolicy {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r


def test_run_prints_every_url_and_says_inference_is_emulated(system):
    text = system["log"].read_text()
    for url in (system["cp"], system["agent"], system["nats"]):
        assert url in text
    assert "EMULATED: no GROQ_API_KEY" in text


@pytest.fixture(scope="module")
def rule(system):
    policy = system["root"] / "pii.rego"
    policy.write_text(readme_policy())
    out = cli(system, "policies", "create", str(policy), "--type", "data_governance", "--tier", "fast").stdout
    m = re.match(r"created ([0-9a-f-]{36}) \(version 1, wasm success", out)
    assert m, out
    return m.group(1)


def test_policy_from_readme_is_stored_compiled_and_listed(system, rule):
    out = cli(system, "policies", "compile", rule).stdout
    m = re.match(rf"{rule}: success, (\d+) bytes of wasm, ([\d.]+) µs per evaluation", out)
    assert m and int(m.group(1)) > 0 and float(m.group(2)) > 0, out
    listing = cli(system, "policies", "list").stdout
    assert rule in listing and "pii" in listing and "data_governance" in listing


def test_http_and_nats_paths_give_the_same_answer(system, rule):
    args = ["evaluate", "--json", "--types", "data_governance", "--tier", "fast", "--context", json.dumps(CONTEXT)]
    via_http = json.loads(cli(system, *args).stdout)
    via_nats = json.loads(cli(system, *args, "--via", "nats").stdout)
    assert via_http["applicable_policies"] == via_nats["applicable_policies"] == [rule]
    assert via_http["decision"] == via_nats["decision"]
    assert via_http["decision"] in ("deny", "review")  # personal data, or a model answer nobody oversees
    assert via_http["constitutional_hash"] == "cdd01ef066bc6cf2"
    assert via_http["performance_metrics"]["groq_inference_time_ms"] >= 0


def test_agent_path_serves_the_stored_policy(system, rule):
    path = f"/v1/data/groqpolicy/rules/p_{rule.replace('-', '')}/decision"
    # the agent's REST API admits no anonymous caller and no writer; the README's curl presents a token
    assert httpx.post(system["agent"] + path, json={"input": CONTEXT}, timeout=10).status_code == 401
    assert httpx.put(system["agent"] + "/v1/policies/x", content="package x\n", timeout=10).status_code == 401
    headers = {"Authorization": f"Bearer {cli(system, 'token').stdout.strip()}"}
    deadline = time.monotonic() + 30
    while True:
        r = httpx.post(system["agent"] + path, json={"input": CONTEXT}, timeout=10, headers=headers).json()
        if "result" in r or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # the new revision is on its way by long polling
    assert r["result"]["decision"] in ("allow", "deny", "review"), r
    # the control plane asks the agent on GROQPOLICY_AGENT_PORT, presenting its evaluate token
    via_cp = httpx.post(system["cp"] + "/api/v1/opa/evaluate", timeout=30, headers=headers,
                        json={"policy_id": rule, "input_data": CONTEXT, "use_wasm": False})
    assert via_cp.status_code == 200 and via_cp.json()["engine"] == "opa", via_cp.text
    assert via_cp.json()["result"]["decision"] == r["result"]["decision"]
    api = json.loads(cli(system, "evaluate", "--json", "--types", "data_governance", "--tier", "fast",
                         "--context", json.dumps(CONTEXT)).stdout)
    assert r["result"]["decision"] == api["policy_results"][0]["decision"]


def test_file_of_contexts_with_progress_and_summary(system, rule):
    contexts = system["root"] / "contexts.jsonl"
    contexts.write_text("".join(json.dumps({**CONTEXT, "text": f"note {i}"}) + "\n" for i in range(150)))
    r = cli(system, "evaluate", "--file", str(contexts), "--types", "data_governance", "--tier", "fast")
    assert re.search(r"^150 contexts in [\d.]+ s", r.stdout, re.M), r.stdout
    assert "150/150 contexts" in r.stderr  # the progress bar reached the end


def test_audit_agents_bundles_and_dashboard(system, rule):
    tail = cli(system, "audit", "tail", "-n", "5").stdout.splitlines()
    assert len(tail) == 5
    assert "audit chain intact" in cli(system, "audit", "verify").stdout
    agents = cli(system, "agents").stdout
    assert "agent-1" in agents and "groqpolicy" in agents
    assert "wasm" in cli(system, "bundles").stdout
    assert httpx.get(system["cp"] + "/", timeout=10).status_code == 401  # the dashboard shows the audit trail
    login = re.search(r"dashboard +(http://\S+/dashboard/login\?code=\S+)", system["log"].read_text()).group(1)
    with httpx.Client(timeout=10, follow_redirects=True) as browser:
        page = browser.get(login)
        assert page.status_code == 200 and "pii" in page.text
    fresh = cli(system, "dashboard").stdout.strip()
    assert "/dashboard/login?code=" in fresh and httpx.get(fresh, timeout=10, follow_redirects=True).status_code == 200


def test_no_secret_on_stdout_and_secret_files_are_private(system, rule):
    state = system["root"] / "state"
    secrets = [line.split("=", 1)[1].rsplit(":", 1)[0] for line in (state / "tokens").read_text().splitlines()
               if "=" in line and not line.startswith("#")]
    secrets.append((state / "bridge-token").read_text().strip())
    assert len(secrets) == 4
    printed = system["log"].read_text()
    assert not [s for s in secrets if s in printed]  # not the admin token, not any other
    # agents' decision logs: with the control plane's processes each keeping its own state dir, in
    # the state dir of whichever process took the agent's uploads
    decision_logs = sorted(state.glob("**/decision_logs.jsonl"))
    assert decision_logs
    logs = [*(state / "logs").glob("*.log"), *(state / "opa").glob("*.log"), *decision_logs]
    assert not [(s, p.name) for p in logs for s in secrets if s in p.read_text()]  # nor in any log
    private = [state / "tokens", state / "bridge-token", state / "opa" / "agent-1.yaml", *decision_logs,
               *state.glob("**/bundles/groqpolicy/rego.tar.gz"), *sorted((state / "logs").glob("*.log"))]
    assert {str(p): oct(p.stat().st_mode & 0o777) for p in private} == {str(p): "0o600" for p in private}


def test_impact_shadow_and_promote_as_the_readme_walks_them(system, rule):
    # on `make run`'s authenticated NATS: the bootstrap made the replay stream, the control plane appends and reads
    strict = system["root"] / "pii-strict.rego"
    strict.write_text(readme_policy().replace("contain personal data?", "contain personal data or contact details?"))
    r = cli(system, "impact", "--rule-id", rule, "--file", str(strict), "--since", "24h")
    m = re.search(r"replayed (\d+) decisions .*: (\d+) would change", r.stdout)
    assert m and int(m.group(1)) >= 150, r.stdout  # the file of contexts above, at least
    asked = int(re.search(r"(\d+) asked anew", r.stdout).group(1))
    assert asked >= 150, r.stdout  # a changed question: every distinct text asked once more
    assert "data_governance:" in r.stdout and re.search(r"\d+/\d+ contexts", r.stderr)
    cli(system, "shadow", "start", "--rule-id", rule, "--file", str(strict), "--sample", "1")
    headers = {"Authorization": f"Bearer {local_token(system['root'] / 'state')}"}
    admin = httpx.Client(base_url=system["cp"], timeout=10, headers=headers)
    deadline = time.monotonic() + 60
    # the shadow runs on the process that began it at once, on the others once their watch has
    # compiled it: traffic keeps coming, as it would, until one decision was compared somewhere;
    # each listing may come from any process, and every one of them shows the deployment's counts
    while True:
        cli(system, "evaluate", "--types", "data_governance", "--tier", "fast", "--context", json.dumps(CONTEXT))
        time.sleep(1)
        if (shadows := admin.get("/api/v1/shadows").json()) and shadows[0]["compared"] >= 1:
            break
        assert time.monotonic() < deadline, shadows
    assert rule in cli(system, "shadow", "list").stdout
    promoted = cli(system, "shadow", "promote", rule, "--force").stdout
    assert promoted.startswith(f"promoted {rule}") and "(forced)" in promoted
    while "contact details" not in admin.get(f"/api/v1/policies/{rule}").json()["opa_policy"]:
        assert time.monotonic() < deadline + 30, "the promotion did not reach every process"
        time.sleep(0.3)
    # promoted on one process: ended on all of them (asked on several connections at once, which
    # reach every process)
    while any(json.loads(body) for _, body in get_together(system["cp"], "/api/v1/shadows", 6, headers)):
        assert time.monotonic() < deadline + 30, "a process still runs the promoted shadow"
        time.sleep(0.3)
    admin.close()


def test_stop_leaves_nothing_running(system):
    r = cli(system, "stop")
    assert r.stdout.startswith("stopped groqpolicy")
    assert system["proc"].wait(timeout=60) == 0
    for port in system["ports"].values():
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
