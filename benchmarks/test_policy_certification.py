"""What certification adds to a policy write: the checks (one `opa eval`, plus one `opa test` when
the policy has tests) beside the bundle compile every write already paid (`opa check`, two `opa
build`s, the wasm load), and a whole `POST /api/v1/policies` with and without certification.

Peers run side by side in interleaved blocks (compile, checks, checks with tests; then certified and
uncertified writes alternating), so the machine's drift reaches all of them alike. Medians and p90
in ms go to `extra_info` and stdout. `GROQPOLICY_BENCH_SHORT=1` cuts the blocks. See
benchmarks/README.md ("Policy certification").
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.certification.checks import PolicyChecks, Subject
from controlplane.infra.processes import start_nats
from controlplane.policies import rego
from tests.controlplane_helpers import ADMIN_HEADERS, make_settings, running_control_plane
from tests.test_certification import LIMIT, TESTS

ROOT = Path(__file__).resolve().parent.parent
SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
BLOCKS = 2 if SHORT else 6
PER_BLOCK = 2 if SHORT else 3


def _stats(samples: list[float]) -> dict:
    data = sorted(samples)
    return {"median_ms": round(statistics.median(data) * 1000, 1),
            "p90_ms": round(data[min(len(data) - 1, int(len(data) * 0.9))] * 1000, 1), "samples": len(data)}


def _interleaved(contenders: dict[str, Callable[[], object]]) -> dict[str, dict]:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():  # warm-up: opa's first start, the page cache
        fn()
    for block in range(BLOCKS):
        order = list(contenders.items())
        if block % 2:
            order.reverse()
        for name, fn in order:
            for _ in range(PER_BLOCK):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: _stats(samples) for name, samples in times.items()}


@pytest.fixture(scope="module")
def control_plane():
    tmp = Path(tempfile.mkdtemp(prefix="bench-cert-"))
    nats = start_nats(tmp / "nats")
    try:
        settings = make_settings(tmp / "state", nats_url=nats.extra["url"], compile_on_start=True)
        with running_control_plane(settings) as services:
            with httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=120) as client:
                yield client, services
    finally:
        nats.stop()


def test_checks_beside_the_compile_every_write_pays(benchmark, control_plane):
    _, services = control_plane
    bundler = services.policies.bundler
    rule_id = uuid.uuid4()
    module = rego.bundle_module(rule_id, LIMIT, title="bench", policy_type="risk_management", tier="nano")
    name = f"p_{rule_id.hex}"
    checks = PolicyChecks(lambda: bundler.compiler.opa, lambda: [ROOT / "rego"])
    plain = Subject(kind="rules", name=name, module=module, declared=["P10-proportional-risk"], written_package="team.limits")
    tested = Subject(kind="rules", name=name, module=module, tests=TESTS, declared=["P10-proportional-risk"],
                     written_package="team.limits")
    result: dict = {}

    def run() -> None:
        result.update(_interleaved({
            "compile_per_write": lambda: bundler.compile({str(rule_id): module}),
            "checks": lambda: checks.run(plain),
            "checks_with_tests": lambda: checks.run(tested),
        }))

    benchmark.pedantic(run, rounds=1, iterations=1)
    assert checks.run(plain).passed and checks.run(tested).passed
    benchmark.extra_info.update(result)
    for name, row in result.items():
        print(f"\n{name}: {row}")


def test_a_policy_write_with_and_without_certification(benchmark, control_plane):
    client, services = control_plane
    certifier = services.policies.certifier
    body = {"name": "bench", "policy_type": "risk_management", "opa_policy": LIMIT, "performance_tier": "nano",
            "constitutional_hash": CONSTITUTIONAL_HASH, "constitutional_principles": ["P10-proportional-risk"]}
    created = client.post("/api/v1/policies", json=body)
    assert created.status_code == 201, created.text
    url = f"/api/v1/policies/{created.json()['rule_id']}"
    flip = iter(range(10**9))

    def write(certified: bool) -> None:
        services.policies.certifier = certifier if certified else None
        try:  # a new text each time: every write compiles and activates a new revision
            text = LIMIT.replace("input.amount > 100", f"input.amount > {100 + next(flip)}")
            r = client.put(url, json={"constitutional_hash": CONSTITUTIONAL_HASH, "opa_policy": text})
            assert r.status_code == 200, r.text
        finally:
            services.policies.certifier = certifier

    result: dict = {}
    benchmark.pedantic(lambda: result.update(_interleaved({
        "write_uncertified": lambda: write(False), "write_certified": lambda: write(True)})), rounds=1, iterations=1)
    result["certification_share"] = round(1 - result["write_uncertified"]["median_ms"] / result["write_certified"]["median_ms"], 3)
    benchmark.extra_info.update(result)
    for name, row in result.items():
        print(f"\n{name}: {row}")
