"""How long a policy write takes to be enforced by a real OPA agent: `POST /api/v1/policies` on a
real control plane (its own process, certification on), then the agent (`opa run --server`,
long-polling the control plane's bundle service) asked for the new policy's decision until it
answers with the marker only the new revision carries. One sample = write sent -> agent answers
(asked while the write is in flight: the agent may enforce it before the write's response).

Each write is a new policy (a new revision of the whole library bundle, as any write is); the
response time of the write itself is kept beside it. p50/p90 in ms go to `extra_info` and stdout.
With `GROQPOLICY_BENCH_BASELINE=<another checkout>` that checkout's control plane (and its own
agent and nats-server) runs beside this one, writes alternating in blocks of two, so both see the
same machine. `GROQPOLICY_BENCH_SHORT=1` makes 6 writes each instead of 20. See benchmarks/README.md ("Policy
propagation").
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.harness import TOKEN
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.infra.processes import free_port, start_nats, start_opa_agent, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
WRITES = 6 if os.environ.get("GROQPOLICY_BENCH_SHORT") == "1" else 20
PER_BLOCK = 2
AGENT_TIMEOUT_S = 30

POLICY = """package team.propagation

import rego.v1

default decision := {"decision": "deny", "reasons": ["no marker"], "confidence": 1}

decision := {"decision": "allow", "reasons": [sprintf("marker %d", [MARKER])], "confidence": 1} if {
	input.amount < 100
}
"""


@contextlib.contextmanager
def _stack(root: Path, tmp: Path) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """nats-server, the control plane of the checkout at `root` (its own process, run from there) and
    an agent configured from it; (control plane client, agent client)."""
    nats = start_nats(tmp / "nats")
    env = {k: v for k, v in os.environ.items() if k != "GROQ_API_KEY"}
    env.update(PYTHONPATH=str(root), GROQPOLICY_NATS_URL=nats.extra["url"], GROQPOLICY_RATE_LIMIT="off",
               GROQPOLICY_TOKENS=f"bench={TOKEN}:admin+evaluate+agent")
    cp_port = free_port()
    with open(tmp / "cp.log", "ab") as log:
        cp = subprocess.Popen([sys.executable, "-m", "controlplane.ops.cli", "serve", "--port", str(cp_port), "--state-dir",
                               str(tmp / "state"), "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=env,
                              cwd=root, start_new_session=True)
    agent = None
    try:
        wait_for_port(cp_port, timeout=120, proc=cp)
        admin = httpx.Client(base_url=f"http://127.0.0.1:{cp_port}", headers={"Authorization": f"Bearer {TOKEN}"},
                             timeout=120)
        (tmp / "agent.yaml").write_text(admin.get("/api/v1/opa/config", params={"min_delay_s": 1, "max_delay_s": 2}).text)
        agent = start_opa_agent(tmp / "agent.yaml", tmp / "opa", extra_args=["--log-level", "error"])
        probe = httpx.Client(base_url=agent.extra["url"], timeout=10)
        deadline = time.monotonic() + 60
        while probe.get("/health", params={"bundles": "true"}).status_code != 200:
            assert time.monotonic() < deadline, "the OPA agent did not activate the bundle"
            time.sleep(0.1)
        yield admin, probe
    finally:
        if agent is not None:
            agent.stop()
        cp.terminate()
        try:
            cp.wait(timeout=10)
        except subprocess.TimeoutExpired:
            cp.kill()
        nats.stop()


@pytest.fixture(scope="module")
def stacks():
    """This checkout's stack, and `GROQPOLICY_BENCH_BASELINE`'s (another checkout, e.g. `git archive
    main`) beside it when set: both measured in the same run."""
    roots = {"this": ROOT}
    if os.environ.get("GROQPOLICY_BENCH_BASELINE"):
        roots["baseline"] = Path(os.environ["GROQPOLICY_BENCH_BASELINE"]).resolve()
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(_stack(root, Path(tempfile.mkdtemp(prefix=f"bench-propagation-{name}-"))))
               for name, root in roots.items()}


def _write_and_wait(admin: httpx.Client, probe: httpx.Client, marker: int) -> tuple[float, float]:
    """(write response s, write sent -> agent answers with this write's marker s).

    The agent is asked while the write is still in flight (the write runs in a thread): an agent
    can enforce the new revision before the write's response, which also waits for the in-process
    evaluator to follow. It is asked for the whole `groqpolicy.rules` subtree, since the new
    policy's path is only known from that response."""
    want = [f"marker {marker}"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        t0 = time.perf_counter()
        write = pool.submit(_write, admin, marker, t0)
        enforced = None
        while enforced is None:
            rules = probe.post("/v1/data/groqpolicy/rules", json={"input": {"amount": 1}}).json().get("result") or {}
            if any(isinstance(v, dict) and (v.get("decision") or {}).get("reasons") == want for v in rules.values()):
                enforced = time.perf_counter() - t0
            else:
                assert time.perf_counter() - t0 < AGENT_TIMEOUT_S, f"the agent never answered with {want}"
                time.sleep(0.005)
        return write.result(), enforced


def _write(admin: httpx.Client, marker: int, t0: float) -> float:
    r = admin.post("/api/v1/policies", json={
        "name": f"propagation {marker}", "policy_type": "risk_management", "performance_tier": "nano",
        "opa_policy": POLICY.replace("MARKER", str(marker)), "constitutional_hash": CONSTITUTIONAL_HASH})
    assert r.status_code == 201, r.text
    return time.perf_counter() - t0


def _stats(samples: list[float]) -> dict:
    data = sorted(samples)
    return {"p50_ms": round(statistics.median(data) * 1000, 1),
            "p90_ms": round(data[min(len(data) - 1, int(len(data) * 0.9))] * 1000, 1),
            "max_ms": round(data[-1] * 1000, 1), "samples": len(data)}


def test_a_policy_write_reaches_the_agent(benchmark, stacks):
    markers = itertools.count()
    for admin, probe in stacks.values():
        _write_and_wait(admin, probe, next(markers))  # warm-up: opa's first starts, the page cache
    writes: dict[str, list[float]] = {name: [] for name in stacks}
    enforced: dict[str, list[float]] = {name: [] for name in stacks}

    def run() -> None:  # interleaved blocks of PER_BLOCK writes, the order rotating every block
        names = list(stacks)
        for block in range(WRITES // PER_BLOCK):
            for name in names[block % len(names):] + names[:block % len(names)]:
                for _ in range(PER_BLOCK):
                    w, e = _write_and_wait(*stacks[name], next(markers))
                    writes[name].append(w)
                    enforced[name].append(e)

    benchmark.pedantic(run, rounds=1, iterations=1)
    result = {f"{name}_{kind}": _stats(samples[name]) for name in stacks
              for kind, samples in (("write_response", writes), ("write_to_agent", enforced))}
    benchmark.extra_info.update(result)
    for name, row in result.items():
        print(f"\n{name}: {row}")
    assert all(len(samples) == WRITES for samples in enforced.values())
