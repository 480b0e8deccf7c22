"""What the agent's REST API authentication costs: the same bundle on two real `opa` agents, one
plain, one as `groqpolicy up` starts it (`--authentication=token --authorization=basic`, the
bundle's `system.authz` policy hashing the presented token), asked the same decision side by side.

    OPA_BIN=.tools/bin/opa .venv/bin/python benchmarks/agent_authz_ab.py [--rounds 7] [--requests 400]

Each round sends `--requests` sequential requests over one keep-alive connection to each agent in
turn (A, B, A, B, ...), so the machine's load (shared, noisy) falls on both alike; a round's figure
is its median latency. The summary is the median of the rounds' medians and B against A. Both
requests carry the same Authorization header, so the bytes on the wire are identical.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import HTTPClient  # noqa: E402
from bridge.kernel.config import Settings  # noqa: E402
from bridge.opabundle.archive import write_bundle  # noqa: E402
from controlplane.bundles.compiler import Compiler  # noqa: E402
from controlplane.bundles.definitions import load_definition  # noqa: E402
from controlplane.infra.processes import start_opa_agent  # noqa: E402

TOKEN = "bench-evaluate-token-00000000"
PATH = "/v1/data/groqpolicy/policies/security_policies/decision"
INPUT = {"input": {"principal": {"id": "bob", "roles": ["viewer"], "mfa": True, "source_ip": "10.1.2.3"},
                   "action": "delete", "resource": {"type": "reports", "classification": "internal"}}}


def bundle(tmp: Path) -> Path:
    """The library bundle with the agent API's digests, as the control plane builds it."""
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    overlay = Settings(bridge_url="http://127.0.0.1:9").bundle_overlay(
        agent_api={"admin": [], "evaluate": [digest]}, bridge_token="bench-bridge-token-000000000")
    compiled = Compiler(ROOT, bridge_url="http://127.0.0.1:9").compile(
        load_definition(ROOT / "bundles" / "groqpolicy.toml"), base=ROOT, overlay=overlay)
    out = tmp / "bundle.tar.gz"
    out.write_bytes(write_bundle(compiled.rego_files))
    return out


async def block(client: HTTPClient, body: bytes, n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        status, _ = await client.post(PATH, body)
        samples.append((time.perf_counter_ns() - t0) / 1000)
        assert status == 200, status
    return statistics.median(samples)


async def run(rounds: int, requests: int, ports: dict[str, int]) -> dict[str, list[float]]:
    header = b"authorization: Bearer %s\r\n" % TOKEN.encode()
    clients = {side: HTTPClient(port, headers=header) for side, port in ports.items()}
    for c in clients.values():
        await c.connect()
    body = json.dumps(INPUT).encode()
    for c in clients.values():  # warm both
        await block(c, body, requests // 4)
    out: dict[str, list[float]] = {side: [] for side in clients}
    for _ in range(rounds):
        for side, c in clients.items():
            out[side].append(await block(c, body, requests))
    for c in clients.values():
        c.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--requests", type=int, default=400)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-authz-"))
    archive = bundle(tmp)
    config = tmp / "agent.yaml"
    config.write_text("{}\n")
    quiet = ["--log-level", "error", str(archive)]
    plain = start_opa_agent(config, tmp / "a", extra_args=["--bundle", *quiet])
    authz = start_opa_agent(config, tmp / "b", extra_args=["--bundle", *quiet], authenticated=True)
    try:
        time.sleep(1.0)
        medians = asyncio.run(run(args.rounds, args.requests, {"A plain": plain.extra["port"],
                                                                "B token+authz": authz.extra["port"]}))
    finally:
        plain.stop()
        authz.stop()
    a, b = (statistics.median(v) for v in medians.values())
    print(json.dumps({"rounds": medians, "median_us": {"A plain": round(a, 1), "B token+authz": round(b, 1)},
                      "b_vs_a": f"{(b / a - 1) * 100:+.1f}%"}, indent=1))


if __name__ == "__main__":
    main()
