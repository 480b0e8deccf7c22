"""Throughput of `/api/v1/evaluate` with one control-plane process and with `PROCESSES` (2) processes
serving one listening socket (what `groqpolicy up` runs with `GROQPOLICY_PROCESSES`), side by side.

Closed loop: wrk with a fixed number of connections (`WORKERS`), each sending its next request as
soon as the previous one is answered, so the servers run flat out and the number is how many
evaluations per second they answer. The contenders take turns in blocks (`BLOCKS` each, the order
alternating), so the machine's drift and the other tenants' load reach both alike; the ratio is of
the medians. The same rules-only policy and request as `test_fixed_load.py` (the library's
`risk_management`). The generator runs on the same cores: its own share is a cost every contender
pays, more so the faster one, which is why it is wrk (~40 µs of CPU per request) and not vegeta
(~190): see benchmarks/README.md ("The load generator's own share").
`GROQPOLICY_BENCH_SHORT=1`: 2 blocks of 1 s. See benchmarks/README.md ("Every core")."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

import msgspec
import pytest

from benchmarks.harness import TOKEN
from benchmarks.wrk import Wrk, closed_loop, ensure_wrk, lua_string, post_script, write_script
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH

SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
BLOCKS = 2 if SHORT else 6
BLOCK_S = 1 if SHORT else 5
WORKERS = 32


def evaluations(wrk: Wrk, work: Path, url: str, body: bytes, seconds: float, token: str = TOKEN) -> dict[str, Any]:
    """`WORKERS` connections sending `body` back to back for `seconds`; wrk's summary. No `token`:
    no Authorization header (the stack's agent runs without authentication)."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    return closed_loop(wrk, post_script(work, body, headers), url, WORKERS, seconds)


def answered(report: dict[str, Any]) -> tuple[float, int]:
    """Requests answered per second without an error status, and how many were not (wrk counts a
    status >= 400, and socket errors apart)."""
    return (report["requests"] - report["status_errors"]) / report["duration_s"], report["status_errors"] + report["socket_errors"]


@pytest.mark.timeout(900)
def test_throughput_one_process_and_two(benchmark, api_stack, capsys):
    try:
        wrk = ensure_wrk()
    except RuntimeError as exc:
        pytest.skip(f"wrk unavailable: {exc}")
    body = msgspec.json.encode({"input_context": api_stack["rules_ctx"], "policy_types": ["risk_management"],
                                "performance_tier": "nano", "constitutional_hash": CONSTITUTIONAL_HASH})
    contenders = {"1 process": api_stack["cp_port"], f"{len(api_stack['multi_pids'])} processes": api_stack["multi_port"]}
    work: Path = api_stack["tmp"] / "closed-loop"
    rps: dict[str, list[float]] = {name: [] for name in contenders}
    errors: dict[str, int] = dict.fromkeys(contenders, 0)

    def run() -> None:
        for port in contenders.values():  # warm-up: every process of each has compiled and cached what it serves
            evaluations(wrk, work / "warm", f"http://127.0.0.1:{port}/api/v1/evaluate", body, 1)
        names = list(contenders)
        for block in range(BLOCKS):
            for name in names if block % 2 == 0 else names[::-1]:
                rate, bad = answered(evaluations(wrk, work / name.replace(" ", "-"),
                                                 f"http://127.0.0.1:{contenders[name]}/api/v1/evaluate", body, BLOCK_S))
                errors[name] += bad
                rps[name].append(rate)

    load_before = os.getloadavg()
    benchmark.pedantic(run, rounds=1, iterations=1)
    load = {"before": load_before, "after": os.getloadavg()}
    one, many = (statistics.median(v) for v in rps.values())
    result = {"requests_per_s": {k: [round(x) for x in v] for k, v in rps.items()}, "median": {k: round(statistics.median(v)) for k, v in rps.items()},
              "ratio": round(many / one, 2), "non_200": errors, "workers": WORKERS, "load_average": load}
    benchmark.extra_info.update(result)
    with capsys.disabled():
        print(f"\nclosed loop, {WORKERS} workers, {BLOCKS} blocks of {BLOCK_S} s each: {result}")
    assert errors == dict.fromkeys(contenders, 0), errors


BATCH = 100  # contexts per batch, the API's maximum
BATCH_WORKERS = 4  # connections sending batches: enough to keep both processes busy, a few per process


def batch_body(stack, principals: list[str]) -> bytes:
    return msgspec.json.encode({"batch_contexts": [{**stack["rules_ctx"], "principal": p} for p in principals],
                                "policy_types": ["risk_management"], "performance_tier": "nano",
                                "constitutional_hash": CONSTITUTIONAL_HASH})


def checked_batches(stack, port: int, rounds: int, first: int) -> None:
    """`rounds` batches on one connection, every answer read: 100 results, each an allow (the closed
    loop below does not read its answers, only their status)."""
    from benchmarks.harness import HTTPClient

    async def run() -> None:
        client = HTTPClient(port, f"Authorization: Bearer {TOKEN}\r\n".encode())
        await client.connect()
        try:
            for k in range(rounds):
                status, data = await client.post("/api/v1/evaluate/batch", batch_body(stack, [f"check{first + k}-{i}" for i in range(BATCH)]))
                assert status == 200, data[:300]
                out = msgspec.json.decode(data)
                assert len(out["results"]) == BATCH and all(r["decision"] == "allow" for r in out["results"])
        finally:
            client.close()

    stack["loop"].run_until_complete(run())


# each request's body built by wrk as it goes: BATCH contexts, the principals `<tag><request>-<i>`,
# so no principal is ever sent twice, however many requests a block sends
_BATCH_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. {token}
local function slurp(name)
  local f = assert(io.open({work} .. "/" .. name, "rb"))
  local text = f:read("*a")
  f:close()
  return text
end
local head, before, after, tail = slurp("head"), slurp("before"), slurp("after"), slurp("tail")
local n = 0
request = function()
  n = n + 1
  local items = {{}}
  for i = 1, {batch} do items[i] = before .. {tag} .. n .. "-" .. (i - 1) .. after end
  return wrk.format(nil, nil, nil, head .. table.concat(items, ",") .. tail)
end
"""


def batch_closed_loop(wrk: Wrk, work: Path, stack, port: int, block: int, seconds: float) -> dict[str, Any]:
    """`BATCH_WORKERS` connections sending batches back to back for `seconds`, every request a body
    of its own (principals never seen before); wrk's summary."""
    work.mkdir(parents=True, exist_ok=True)
    mark = "@@principal@@"
    one = msgspec.json.encode({**stack["rules_ctx"], "principal": mark})  # as batch_body encodes each context
    whole = batch_body(stack, [mark])
    at = whole.index(one)
    before, after = one.split(mark.encode())
    for name, piece in {"head": whole[:at], "before": before, "after": after, "tail": whole[at + len(one):]}.items():
        (work / name).write_bytes(piece)
    script = write_script(work / "batch.lua", _BATCH_LUA.format(token=lua_string(TOKEN), work=lua_string(work), batch=BATCH,
                                                               tag=lua_string(f"b{port}-{block}-")))
    return closed_loop(wrk, script, f"http://127.0.0.1:{port}/api/v1/evaluate/batch", BATCH_WORKERS, seconds)


@pytest.mark.timeout(900)
def test_batch_across_processes_and_the_agent(benchmark, api_stack, capsys):
    """Batch contexts/s (distinct principals) with one process and with two, and the OPA agent's REST
    API on the same policy, one context per request, side by side in blocks. Both driven the same way:
    a wrk closed loop (`BATCH_WORKERS` connections sending batches of `BATCH`; `WORKERS` sending the
    agent's single contexts), so each number is as many contexts/s as that server answers."""
    try:
        wrk = ensure_wrk()
    except RuntimeError as exc:
        pytest.skip(f"wrk unavailable: {exc}")
    entry = api_stack["ids"]["risk_management"]["entrypoint"]
    agent_url = f"http://127.0.0.1:{api_stack['agent_port']}/v1/data/{entry}"
    agent_body = msgspec.json.encode({"input": api_stack["rules_ctx"]})
    ports = {"batch, 1 process": api_stack["cp_port"], f"batch, {len(api_stack['multi_pids'])} processes": api_stack["multi_port"]}
    rates: dict[str, list[float]] = {name: [] for name in [*ports, "opa agent REST"]}
    errors: dict[str, int] = dict.fromkeys(rates, 0)
    work: Path = api_stack["tmp"] / "batch-closed-loop"

    def run() -> None:
        for n, port in enumerate(ports.values()):  # answers checked, and every process warm (both ways of a batch)
            checked_batches(api_stack, port, 12, first=100 * n)
        for block in range(BLOCKS):
            order = [*ports, "opa agent REST"]
            for name in order if block % 2 == 0 else order[::-1]:
                if name in ports:
                    report = batch_closed_loop(wrk, work / "batch", api_stack, ports[name], block, BLOCK_S)
                    per_request = BATCH
                else:
                    report = evaluations(wrk, work / "agent", agent_url, agent_body, BLOCK_S, token="")
                    per_request = 1
                rate, bad = answered(report)
                errors[name] += bad
                rates[name].append(rate * per_request)

    load_before = os.getloadavg()
    benchmark.pedantic(run, rounds=1, iterations=1)
    load = {"before": load_before, "after": os.getloadavg()}
    medians = {k: round(statistics.median(v)) for k, v in rates.items()}
    agent = medians["opa agent REST"]
    result = {"contexts_per_s": {k: [round(x) for x in v] for k, v in rates.items()}, "median": medians,
              "vs_agent": {k: round(v / agent, 1) for k, v in medians.items() if k in ports}, "non_200": errors,
              "batch_workers": BATCH_WORKERS, "agent_workers": WORKERS, "load_average": load}
    benchmark.extra_info.update(result)
    with capsys.disabled():
        print(f"\nbatches of {BATCH} distinct principals ({BATCH_WORKERS} workers) vs the agent ({WORKERS} workers), "
              f"{BLOCKS} blocks of {BLOCK_S} s: {result}")
    assert errors == dict.fromkeys(rates, 0), errors
