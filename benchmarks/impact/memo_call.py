"""What one `http.send` to the bridge costs in the evaluator, with and without a `SendMemo` hit.

    .venv/bin/python benchmarks/impact/memo_call.py [--calls 50] [--repeat 200]

One entrypoint sends `lib.groq`'s request for each of `--calls` distinct texts; a base entrypoint
builds the same requests without sending them. The cost of one call is `(eval(send) - eval(base))
/ calls`, from the fastest of `--repeat` evaluations of each (and from the medians), interleaved;
the transport answers at once, so the figure is the host's own work: reading the request, keying
it, the transport call and writing the response back, against the memo's dump, lookup and parse.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import msgspec

from bridge.opawasm import HostConfig, SendMemo, policy_from_files
from tests.conftest import REPO_ROOT
from tests.wasm_helpers import build_wasm_bundle, bundle_files

POLICY = """package mb

import data.groqpolicy.lib.groq

send := [http.send(groq.request("memo", "fast", "Is this text harmful?", {"text": x})) | some x in input.xs]

base := [groq.request("memo", "fast", "Is this text harmful?", {"text": x}) | some x in input.xs]
"""


def _answer(tier: str, body: Any, timeout: float) -> tuple[int, Any]:
    return 200, {"decision": "allow", "confidence": 0.9, "rationale": "about " + body["context"]["text"], "model": "m"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    lib = (REPO_ROOT / "rego" / "lib" / "groq.rego").read_text()
    files = bundle_files(build_wasm_bundle({"mb.rego": POLICY, "groq.rego": lib}, ["mb/send", "mb/base"]))
    inp = msgspec.json.encode({"xs": [f"note {i}: a friendly reminder" for i in range(args.calls)]})
    out: dict[str, dict[str, float]] = {}
    for name, memo in (("without_memo", None), ("memo_hit", SendMemo())):
        host = HostConfig(bridge_url="http://127.0.0.1:8016", infer_transport=_answer, send_memo=memo)
        policy = policy_from_files(files, host=host, pool_size=1)
        policy.evaluate_raw("mb/send", inp)  # the memo learns every request here
        times: dict[str, list[float]] = {"mb/send": [], "mb/base": []}
        for _ in range(args.repeat):
            for ep, found in times.items():
                t0 = time.perf_counter()
                policy.evaluate_raw(ep, inp)
                found.append(time.perf_counter() - t0)
        policy.close()
        send, base = times["mb/send"], times["mb/base"]
        out[name] = {"us_per_call_min": round((min(send) - min(base)) / args.calls * 1e6, 1),
                     "us_per_call_median": round((statistics.median(send) - statistics.median(base)) / args.calls * 1e6, 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
