"""The host-call path writes builtin results straight into linear memory (strings and int64s in a
per-evaluation arena, the rest through the guest's parser) and reads the policy's own string
constants from a per-policy cache. These cases check the answers against `opa eval` where the
arena's edges are: many results in one evaluation (past the arena, into guest-heap memory), one
result bigger than the whole arena, results fed into further builtins and into the guest's own
string, object and comparison code, integers at and past int64 and in the guest's own arithmetic and comparisons, and evaluations on one instance
one after another (an arena address holds a new string each time, so it must never be cached)."""

from __future__ import annotations

import pytest

from bridge.opawasm import UNDEFINED, WasmPolicy
from bridge.opawasm.bundle import policy_from_files
from bridge.opawasm.runtime import SCRATCH
from tests.wasm_helpers import build_wasm_bundle, bundle_files, opa_eval_many

REGO = """package hc

many := [sprintf("item %d of %s: %v", [i, input.name, x]) | some i, x in input.xs]
joined := concat("|", many)
lengths := [count(s) | some s in many]
as_keys := {s: count(s) | some s in many}
nested := sprintf("%s/%s", [sprintf("%s-%d", [input.name, count(input.xs)]), upper(sprintf("%v", [input.name]))])
big := sprintf("%s%s", [input.big, input.name])
big_len := count(big)
digest := crypto.sha256(input.name)
same_digest := digest == crypto.sha256(input.name)
ints := [units.parse_bytes(s) | some s in input.sizes]
int_sum := sum(ints)
time_ns := time.parse_rfc3339_ns(input.ts)
later := time_ns > 0
minute_later := time_ns + 60000000000
min_ns := time.parse_rfc3339_ns("1677-09-21T00:12:43.145224192Z")
min_ns_less := min_ns < time_ns
diff := time.diff(time_ns + 61000000000, time_ns)
size_is := units.parse_bytes("1KB") == 1000
sizes_sorted := sort(ints)
replaced := regex.replace(input.name, "[aeiou]", "_")
split := regex.split(",", input.csv)
objects := json.unmarshal(input.doc)
in_set := {x | some x in split}
found := "b" in in_set
"""
RULES = ["many", "joined", "lengths", "as_keys", "nested", "big_len", "digest", "same_digest", "ints",
         "int_sum", "time_ns", "later", "minute_later", "min_ns", "min_ns_less", "diff", "size_is", "sizes_sorted", "replaced", "split", "objects", "found"]


def _inputs() -> list[dict]:
    def one(name: str, n: int, ts: str) -> dict:
        return {"name": name, "xs": [{"k": i, "v": name * (i % 4)} for i in range(n)], "big": "x" * (SCRATCH + 100),
                "sizes": ["1KB", "3MiB", "9223372036854775807B", "0", "18446744073709551616B"], "ts": ts,
                "csv": "a,b,,c", "doc": '{"k": [1, 2.5, null, true, {"n": "x"}], "é": "ü"}'}

    # 1,200 results of ~60 bytes: several times the arena, so most of them go to guest-heap memory
    return [one("alice", 1200, "2026-12-02T10:00:00Z"), one("bøb ünïcode", 3, "1970-01-01T00:00:00.5Z"),
            one("", 0, "2262-04-11T23:47:16.854775807Z")]


@pytest.fixture(scope="module")
def policy() -> WasmPolicy:
    bundle = build_wasm_bundle({"hc.rego": REGO}, [f"hc/{r}" for r in RULES])
    return policy_from_files(bundle_files(bundle), pool_size=1)


@pytest.mark.parametrize("rule", RULES)
def test_results_match_opa_eval_evaluation_after_evaluation(policy: WasmPolicy, rule: str) -> None:
    inputs = _inputs()
    want = opa_eval_many({"hc.rego": REGO}, None, f"data.hc.{rule}", inputs)
    # twice over, on the one pooled instance: an arena address is reused with other contents
    for _ in range(2):
        for i, inp in enumerate(inputs):
            got = policy.evaluate(f"hc/{rule}", inp)
            assert ([] if got is UNDEFINED else [got]) == want[i]["out"], (rule, i)
