"""`groqpolicy impact` and `groqpolicy shadow ...`: what a policy change would do, before it is live.

`impact` asks `POST /api/v1/impact` for a streamed answer (`application/x-ndjson`): progress lines
drive the progress bar, the last line is the report, printed as tables (or as JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from controlplane.ops.client import ClientError, ControlPlaneClient
from controlplane.ops.commands import _client, _progress, _table

STATES = ("allow", "review", "deny", "undefined", "none")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(text: str) -> float:
    """`90`, `90s`, `30m`, `24h`, `7d` -> seconds."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise ClientError(f"--since {text!r}: not a duration", "write it as 3600, 90m, 24h or 7d")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def candidate_of(args: argparse.Namespace) -> dict[str, Any]:
    """The candidate from --rule-id/--file (changed Rego), --candidate-id, --bundle-dir."""
    found: dict[str, Any] = {}
    if args.rule_id:
        found["rule_id"] = args.rule_id
    if args.file:
        try:
            found["opa_policy"] = Path(args.file).read_text()
        except OSError as exc:
            raise ClientError(f"{args.file}: cannot read ({exc.strerror})", "give the path of the changed .rego file") from exc
    if getattr(args, "candidate_id", None):
        found["candidate_id"] = args.candidate_id
    if getattr(args, "bundle_dir", None):
        found["bundle_dir"] = str(Path(args.bundle_dir).resolve())
    return found


def _pass_progress(line: dict[str, Any], started: float) -> None:
    if line.get("pass", 1) > 1 and line["done"] == 0:  # a new pass after a batch: a bar of its own
        sys.stderr.write(f"\npass {line['pass']}, with the batch's answers\n")
    _progress(line["done"], line["total"], started)


def _batch_progress(b: dict[str, Any]) -> None:
    sys.stderr.write(f"\rbatch {b['id']}: {b['status']:<11} {b['done'] + b['failed']}/{b['total'] or '?'} judgments "
                     f"answered ({b['failed']} failed)  {b['elapsed_s']:,.1f} s")
    if b["status"] in ("completed", "failed", "expired", "cancelled"):
        sys.stderr.write("\n")
    sys.stderr.flush()


def _streamed_report(api: ControlPlaneClient, body: dict[str, Any], quiet: bool) -> dict[str, Any]:
    started = time.perf_counter()
    report: dict[str, Any] | None = None
    try:
        with api.http.stream("POST", "/api/v1/impact", json=body, headers={"Accept": "application/x-ndjson"}) as resp:
            if resp.status_code >= 400:
                resp.read()
                api.raise_for(resp, "POST", "/api/v1/impact")
            for line in resp.iter_lines():
                if not line:
                    continue
                item = json.loads(line)
                if "progress" in item and not quiet:
                    _pass_progress(item["progress"], started)
                elif "batch" in item and not quiet:
                    _batch_progress(item["batch"])
                elif "report" in item:
                    report = item["report"]
                elif "error" in item:
                    raise ClientError(f"impact: {item['error'].get('message', item['error'])}")
    except httpx.ConnectError as exc:
        raise ClientError(f"cannot reach the control plane at {api.base_url}", "start the system or pass --url") from exc
    finally:
        if not quiet:
            sys.stderr.write("\n")
    if report is None:
        raise ClientError("impact: the answer ended before the report", "retry; see the control plane's log")
    return report


def _helped(report: dict[str, Any]) -> str:
    helped = report.get("helper_decisions") or 0
    return f", {helped:,} of them by helper processes" if helped else ""


def render_report(report: dict[str, Any]) -> str:
    calls, lat = report["model_calls"], report["latency"]
    out = [f"candidate: {report['candidate']} (revision {report['candidate_revision']})",
           f"replayed {report['decisions']} decisions in {report['elapsed_s']:.2f} s "
           f"({report['decisions_per_s']:,.0f}/s{_helped(report)}): {report['changed']} would change", ""]
    for kind in sorted(report["matrix"], key=lambda k: (k != "*", k)):
        rows = report["matrix"][kind]
        states = [s for s in STATES if s in rows or any(s in r for r in rows.values())]
        table = [[f"{before} ->", *[rows.get(before, {}).get(after, 0) for after in states]] for before in states if before in rows]
        out += [f"{'whole decision' if kind == '*' else kind}:", _table(table, ["before \\ after", *states]), ""]
    price = "at the batch price" if calls["via"] == "batch" else "at list price"
    out.append(f"judgments (distinct requests): {calls['recorded']} answered from the recording, {calls['new']} asked anew "
               f"({calls['via']}, {calls['failed']} failed), estimated cost ${calls['cost_usd']:.6f} {price}")
    if calls.get("batches"):
        out.append(f"batch jobs: {', '.join(calls['batches'])}")
    out.append(f"latency: in-process p50 {lat['recorded_wasm_us_p50']} µs recorded -> {lat['candidate_wasm_us_p50']} µs "
               f"candidate ({lat['change_us']:+} µs); new model calls p50 {lat['new_call_ms_p50']} ms")
    for ex in report["examples"]:
        out.append(f"  {ex['policy_type']}: {ex['before']} -> {ex['after']} ({ex['count']}), e.g. "
                   + "; ".join(json.dumps(i, sort_keys=True)[:160] for i in ex["inputs"]))
    return "\n".join(out)


def cmd_impact(args: argparse.Namespace) -> int:
    if not args.since and not args.count:
        raise ClientError("impact: give --since (e.g. 24h) or --count (the newest N decisions)")
    body: dict[str, Any] = {"candidate": candidate_of(args), "ask": not args.no_ask, "via": args.via}
    if args.since:
        body["since_s"] = duration_s(args.since)
    if args.count:
        body["count"] = args.count
    with _client(args) as api:
        report = _streamed_report(api, body, quiet=args.json)
    print(json.dumps(report, indent=2) if args.json else render_report(report))
    return 0


def _shadow_rows(shadows: list[dict[str, Any]]) -> list[list[Any]]:
    return [[s["rule_id"], s["candidate"], s["sample"], s["compared"], s["diverged"], f"{s['divergence_rate']:.2%}",
             f"{s['max_divergence']:.2%}"] for s in shadows]


def cmd_shadow(args: argparse.Namespace) -> int:
    with _client(args) as api:
        if args.shadow_command == "start":
            body: dict[str, Any] = {"candidate": candidate_of(args)}
            if args.sample is not None:
                body["sample"] = args.sample
            shown = [api.post("/api/v1/shadows", body)]
        elif args.shadow_command in ("promote", "discard"):
            extra = {"force": True} if getattr(args, "force", False) else None
            result = api.post(f"/api/v1/shadows/{args.rule_id}/{args.shadow_command}", extra)
            print(f"{args.shadow_command}d {args.rule_id}: divergence {result['divergence_rate']:.2%} over "
                  f"{result['compared']} compared decisions" + (" (forced)" if result.get("forced") else ""))
            return 0
        else:
            shown = api.get("/api/v1/shadows")
    if not shown:
        print("no shadows")
    else:
        print(_table(_shadow_rows(shown), ["live policy", "candidate", "sample", "compared", "diverged", "rate", "max"]))
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], client_opts: Any) -> None:
    im = sub.add_parser("impact", help="replay recorded decisions through a changed policy: what would change")
    im.add_argument("--rule-id", help="the live policy that changes (with --file) or is replaced (with --candidate-id)")
    im.add_argument("--file", help="the changed Rego of --rule-id")
    im.add_argument("--candidate-id", help="a stored policy that is not active yet")
    im.add_argument("--bundle-dir", help="a changed copy of rego/ (the library, the constitution, the examples)")
    im.add_argument("--since", help="the window: decisions of the last 90m, 24h, 7d, ...")
    im.add_argument("--count", type=int, help="the newest N decisions (within --since when both)")
    im.add_argument("--via", choices=["online", "batch"], default="online",
                    help="how judgments that changed are asked: the live workers now, or Batch API jobs at the "
                         "batch price (slower: a job can take up to its completion window)")
    im.add_argument("--no-ask", action="store_true", help="do not ask the model judgments that changed (they count as review)")
    im.add_argument("--json", action="store_true", help="the whole report as JSON")
    client_opts(im)
    im.set_defaults(func=cmd_impact)
    sh = sub.add_parser("shadow", help="evaluate a candidate beside a live policy on live traffic; promote or discard it")
    sh_sub = sh.add_subparsers(dest="shadow_command", metavar="ACTION")
    start = sh_sub.add_parser("start", help="shadow a live policy with a candidate")
    start.add_argument("--rule-id", required=True, help="the live policy")
    start.add_argument("--file", help="its changed Rego")
    start.add_argument("--candidate-id", help="or a stored policy, not active yet, to replace it with")
    start.add_argument("--sample", type=float, help="share of live traffic (0 to 1; default 0.1)")
    ls = sh_sub.add_parser("list", help="shadows and their divergence rates")
    promote = sh_sub.add_parser("promote", help="apply the candidate (refused above the divergence threshold)")
    promote.add_argument("--force", action="store_true", help="promote above the threshold (recorded in the audit trail)")
    discard = sh_sub.add_parser("discard", help="drop the shadow")
    for p in (promote, discard):
        p.add_argument("rule_id")
    for p in (start, ls, promote, discard):
        client_opts(p)
        p.set_defaults(func=cmd_shadow)
