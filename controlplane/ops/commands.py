"""CLI subcommands that talk to a running system: policies, evaluate, audit, agents, bundles, stop, bench.

`cli.py` parses the command line and calls these. As there, what only one command needs (nats-py for
`evaluate --via nats`, the supervisor for `stop`) is imported inside that command, so that parsing
stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.kernel.config import PROJECT_ROOT, ClientSettings, Settings, environment
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.ops.certificates import policy_lines
from controlplane.ops.client import ClientError, ControlPlaneClient, local_token, resolve_token
from controlplane.ops.natstool import evaluate_over_nats

if TYPE_CHECKING:
    pass

BATCH = 100  # the API's batch limit


def _client(args: argparse.Namespace) -> ControlPlaneClient:
    settings = Settings.from_env()
    state_dir = Path(args.state_dir) if getattr(args, "state_dir", None) else settings.state_dir
    url = args.url or ClientSettings.from_env().url or settings.base_url
    return ControlPlaneClient(url, resolve_token(args.token, state_dir), timeout=args.timeout)


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _list(args: argparse.Namespace, path: str, header: list[str], rows: Callable[[list[dict[str, Any]]], list[list[Any]]],
          empty: str, **params: Any) -> int:
    """GET a list and print it as a table, or `empty` when there is nothing in it."""
    with _client(args) as api:
        items = api.get(path, **params)
    if not items:
        print(empty)
    else:
        print(_table(rows(items), header))
    return 0


def _read_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ClientError(f"{what}: invalid JSON ({exc})", "quote the JSON for your shell, e.g. --context '{\"a\": 1}'") from exc


# -- policies ---------------------------------------------------------------------------------
def _policy_rows(policies: list[dict[str, Any]]) -> list[list[Any]]:
    return [[p["rule_id"], p["name"], p["policy_type"], p["performance_tier"], p.get("version", ""),
             "yes" if p.get("is_active") else "no", p.get("wasm_compilation_status", p.get("compilation_status", ""))]
            for p in policies]


def cmd_policies_list(args: argparse.Namespace) -> int:
    return _list(args, "/api/v1/policies", ["rule_id", "name", "type", "tier", "version", "active", "compiled"],
                 _policy_rows, "no policies stored yet (create one: groqpolicy policies create FILE.rego --name N --type T)",
                 policy_type=args.type, performance_tier=args.tier,
                 is_active=None if args.active is None else str(args.active).lower())


def _read_file(name: str, what: str) -> str:
    try:
        return Path(name).read_text()
    except OSError as exc:
        raise ClientError(f"{name}: cannot read ({exc.strerror})", f"pass the path of {what}") from exc


def cmd_policies_create(args: argparse.Namespace) -> int:
    path = Path(args.file)
    rego = _read_file(args.file, "a .rego file")
    body = {
        "name": args.name or path.stem, "policy_type": args.type, "opa_policy": rego,
        "performance_tier": args.tier, "constitutional_principles": args.principle or [],
        "constitutional_hash": CONSTITUTIONAL_HASH,
        "opa_tests": _read_file(args.tests, "the policy's opa tests (.rego)") if args.tests else "",
        "certification": {"model_review": args.review, "override": args.override},
    }
    with _client(args) as api:
        created = api.post("/api/v1/policies", body)
        print(f"created {created['rule_id']} (version {created.get('version', 1)}, wasm {created['wasm_compilation_status']}, "
              f"bundle {created.get('bundle_revision', '?')})")
        print("\n".join(policy_lines(api.get(f"/api/v1/policies/{created['rule_id']}"))[2:]))
    return 0


def cmd_policies_show(args: argparse.Namespace) -> int:
    with _client(args) as api:
        print("\n".join(policy_lines(api.get(f"/api/v1/policies/{args.rule_id}"))))
    return 0


def cmd_policies_compile(args: argparse.Namespace) -> int:
    with _client(args) as api:
        report = api.post(f"/api/v1/policies/{args.rule_id}/compile")
    print(f"{report['rule_id']}: {report['compilation_status']}, {report['bytecode_size']} bytes of wasm, "
          f"{report['performance_estimate']:.1f} µs per evaluation (measured median)")
    return 0


# -- evaluate ---------------------------------------------------------------------------------
def _progress(done: int, total: int, started: float) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    rate = done / max(time.perf_counter() - started, 1e-9)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} contexts  {rate:,.0f}/s")
    sys.stderr.flush()


def _load_contexts(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ClientError(f"{path}: cannot read ({exc.strerror})", "pass a JSON-lines file: one context object per line") from exc
    contexts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ClientError(f"{path}:{n}: invalid JSON ({exc})", "one JSON object per line") from exc
        if not isinstance(obj, dict):
            raise ClientError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}", "one JSON object per line")
        contexts.append(obj)
    if not contexts:
        raise ClientError(f"{path}: no contexts", "one JSON object per line")
    return contexts


def cmd_evaluate(args: argparse.Namespace) -> int:
    types = [t for t in (args.types or "").split(",") if t]
    if args.file:
        return _evaluate_file(args, Path(args.file), types)
    if args.context is None:
        raise ClientError("nothing to evaluate", "pass --context '{...}' or --file contexts.jsonl")
    context = _read_json(args.context, "--context")
    if not isinstance(context, dict):
        raise ClientError("--context: expected a JSON object", "e.g. --context '{\"principal\": {\"id\": \"alice\"}}'")
    body = {"input_context": context, "policy_types": types, "performance_tier": args.tier,
            "constitutional_hash": CONSTITUTIONAL_HASH, "require_explanation": args.explain}
    if args.via == "nats":
        state_dir = Path(args.state_dir) if args.state_dir else Settings.from_env().state_dir
        result = evaluate_over_nats(args.nats_url, body, state_dir)
    else:
        with _client(args) as api:
            result = api.post("/api/v1/evaluate", body)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    pm = result["performance_metrics"]
    print(f"decision: {result['decision']} (confidence {result['confidence_score']:.2f})")
    for reason in result.get("reasons", [])[:10]:
        print(f"  - {reason}")
    print(f"policies: {len(result['applicable_policies'])}  latency: {pm['total_latency_ms']:.2f} ms "
          f"(wasm {pm['wasm_execution_time_us']:.0f} µs, model {pm['groq_inference_time_ms']:.1f} ms; "
          f"{pm.get('performance_tier', args.tier)} target {pm.get('target_latency_ms', '?')} ms "
          f"{'met' if pm.get('target_achieved') else 'missed'})")
    if result.get("explanation"):
        print(result["explanation"])
    return 0


def _evaluate_file(args: argparse.Namespace, path: Path, types: list[str]) -> int:
    contexts = _load_contexts(path)
    counts: dict[str, int] = {}
    latencies: list[float] = []
    out = open(args.output, "w") if args.output else None
    started = time.perf_counter()
    try:
        with _client(args) as api:
            for i in range(0, len(contexts), BATCH):
                chunk = contexts[i:i + BATCH]
                body = {"batch_contexts": chunk, "policy_types": types, "performance_tier": args.tier,
                        "constitutional_hash": CONSTITUTIONAL_HASH}
                reply = api.post("/api/v1/evaluate/batch", body)
                for result in reply["results"]:
                    counts[result["decision"]] = counts.get(result["decision"], 0) + 1
                    latencies.append(result["performance_metrics"]["total_latency_ms"])
                    if out:
                        out.write(json.dumps(result) + "\n")
                _progress(min(i + BATCH, len(contexts)), len(contexts), started)
    finally:
        sys.stderr.write("\n")
        if out:
            out.close()
    elapsed = time.perf_counter() - started
    summary = ", ".join(f"{k} {counts.get(k, 0)}" for k in ("allow", "deny", "review"))
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(f"{len(contexts)} contexts in {elapsed:.2f} s ({len(contexts) / elapsed:,.0f}/s): {summary}")
    print(f"per-context latency: median {statistics.median(lat):.2f} ms, p99 {p99:.2f} ms")
    return 0


# -- audit, agents, bundles ------------------------------------------------------------------
def _audit_line(item: dict) -> str:
    rec = item.get("record", {})
    ids = rec.get("evaluation_id") or rec.get("decision_id") or rec.get("record_id", "")
    return (f"{item.get('seq', ''):>6}  {rec.get('timestamp', '')[:23]:23}  {rec.get('source', ''):9}  "
            f"{rec.get('decision', ''):7}  {ids}  {rec.get('hash', '')[:12]}")


def cmd_audit_tail(args: argparse.Namespace) -> int:
    """The last N records (read newest first from the chain's tail), then follow new ones."""
    with _client(args) as api:
        page = api.get("/api/v1/audit", limit=max(1, min(args.lines, 1000)), newest_first="true")
        records = list(reversed(page.get("records", [])))[-args.lines:] if args.lines > 0 else []
        for item in records:
            print(_audit_line(item))
        after = records[-1]["seq"] if records else (page.get("records") or [{"seq": 0}])[0]["seq"]
        while args.follow:
            time.sleep(1.0)
            page = api.get("/api/v1/audit", limit=1000, after_seq=after)
            for item in page.get("records", []):
                print(_audit_line(item), flush=True)
                after = item["seq"]
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Hashes, links, signatures and the last checkpoint; the first bad record and why (exit 1)."""
    with _client(args) as api:
        report = api.get("/api/v1/audit/verify")
    cp = report.get("checkpoint")
    against = (f"length checked against checkpoint seq {cp['seq']} ({cp['time']}, key {cp['kid']})" if cp
               else "no checkpoint taken yet to check the length against")
    if report.get("ok"):
        signers = ", ".join(f"{kid} ({n})" for kid, n in sorted((report.get("signers") or {}).items())) or "none"
        print(f"audit chain intact: {report.get('checked', 0)} records verified (hashes, links, signatures); "
              f"signed by {signers}; {against}")
        return 0
    print(f"audit chain BROKEN at seq {report.get('first_bad_seq')}: {report.get('problem')}: {report.get('reason')}",
          file=sys.stderr)
    print(f"{report.get('bad', 0)} bad record(s) among {report.get('checked', 0)}; {against}", file=sys.stderr)
    return 1


def _agent_rows(agents: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per agent and bundle (an agent without bundles gets one row of dashes)."""
    rows = []
    for a in agents:
        for b in a["bundles"] or [{"name": "-", "active_revision": "-", "code": "", "message": ""}]:
            state = "ok" if not b.get("code") else f"{b['code']}: {b.get('message', '')[:60]}"
            rows.append([a["id"], b["name"], b.get("active_revision", ""), state,
                         time.strftime("%H:%M:%S", time.localtime(a["last_seen"]))])
    return rows


def cmd_agents(args: argparse.Namespace) -> int:
    return _list(args, "/api/v1/opa/agents", ["agent", "bundle", "active revision", "status", "last seen"],
                 _agent_rows, "no OPA agent has reported status yet")


def _bundle_rows(bundles: list[dict[str, Any]]) -> list[list[Any]]:
    return [[b["bundle"], b["target"], b["revision"], b["size"], b["etag"][:14] + '"', b.get("signed_by", ""),
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b["activated_at"]))] for b in bundles]


def cmd_bundles(args: argparse.Namespace) -> int:
    return _list(args, "/api/v1/bundles", ["bundle", "target", "revision", "bytes", "etag", "signed by", "activated"],
                 _bundle_rows, "no bundle revision is active")


# -- dashboard, token ------------------------------------------------------------------------
def cmd_dashboard(args: argparse.Namespace) -> int:
    """A one-time sign-in link: the token itself never goes on a screen, a log or a URL."""
    with _client(args) as api:
        link = api.post("/dashboard/codes", {})["url"]
    if args.open:
        import webbrowser

        if webbrowser.open(link):
            return 0
    print(link)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """A token from the local tokens file, asked for by name (printed only when asked for)."""
    state_dir = Path(args.state_dir) if args.state_dir else Settings.from_env().state_dir
    token = local_token(state_dir, args.name)
    if not token:
        raise ClientError(f"no token named {args.name!r} in {state_dir / 'tokens'}", "names: admin, evaluate, agent")
    print(token)
    return 0


# -- stop, bench -----------------------------------------------------------------------------
def cmd_stop(args: argparse.Namespace) -> int:
    from controlplane.ops.supervisor import pid_file

    state_dir = Path(args.state_dir) if args.state_dir else Settings.from_env().state_dir
    path = pid_file(state_dir)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ClientError(f"no running system recorded in {path}", "start one with `make run` or `groqpolicy up`") from exc
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError as exc:
        path.unlink(missing_ok=True)
        raise ClientError(f"process {pid} from {path} is not running (stale pid file removed)", "") from exc
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"stopped groqpolicy (pid {pid})")
            return 0
        time.sleep(0.2)
    raise ClientError(f"process {pid} did not stop within 60 s", f"kill it by hand: kill {pid}")


def cmd_bench(args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "pytest", "benchmarks", "--benchmark-only", "-p", "no:cacheprovider",
            "--benchmark-columns=median,mean,min,max,rounds"]
    if args.k:
        argv += ["-k", args.k]
    env = dict(environment(), **({"GROQPOLICY_BENCH_SHORT": "1"} if args.short else {}))
    return subprocess.call(argv, cwd=PROJECT_ROOT, env=env)
