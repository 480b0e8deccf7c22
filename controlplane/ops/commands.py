"""CLI subcommands that talk to a running system: policies, evaluate, audit, agents, bundles, stop, bench."""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bridge.kernel.config import PROJECT_ROOT, ClientSettings, Settings, environment
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.ops.client import ClientError, ControlPlaneClient, resolve_token

BATCH = 100  # the API's batch limit


def _client(args: argparse.Namespace) -> ControlPlaneClient:
    settings = Settings.from_env()
    state_dir = Path(args.state_dir) if getattr(args, "state_dir", None) else settings.state_dir
    url = args.url or ClientSettings.from_env().url or settings.base_url
    return ControlPlaneClient(url, resolve_token(args.token, state_dir), timeout=args.timeout)


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _read_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ClientError(f"{what}: invalid JSON ({exc})", "quote the JSON for your shell, e.g. --context '{\"a\": 1}'") from None


# -- policies ---------------------------------------------------------------------------------
def cmd_policies_list(args: argparse.Namespace) -> int:
    with _client(args) as api:
        rows = api.get("/api/v1/policies", policy_type=args.type, performance_tier=args.tier,
                       is_active=None if args.active is None else str(args.active).lower())
    if not rows:
        print("no policies stored yet (create one: groqpolicy policies create FILE.rego --name N --type T)")
        return 0
    print(_table([[p["rule_id"], p["name"], p["policy_type"], p["performance_tier"], p.get("version", ""),
                   "yes" if p.get("is_active") else "no", p.get("wasm_compilation_status", p.get("compilation_status", ""))]
                  for p in rows], ["rule_id", "name", "type", "tier", "version", "active", "compiled"]))
    return 0


def cmd_policies_create(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        rego = path.read_text()
    except OSError as exc:
        raise ClientError(f"{path}: cannot read ({exc.strerror})", "pass the path of a .rego file") from None
    body = {
        "name": args.name or path.stem, "policy_type": args.type, "opa_policy": rego,
        "performance_tier": args.tier, "constitutional_principles": args.principle or [],
        "constitutional_hash": CONSTITUTIONAL_HASH,
    }
    with _client(args) as api:
        created = api.post("/api/v1/policies", body)
    print(f"created {created['rule_id']} (version {created.get('version', 1)}, wasm {created['wasm_compilation_status']}, "
          f"bundle {created.get('bundle_revision', '?')})")
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
        raise ClientError(f"{path}: cannot read ({exc.strerror})", "pass a JSON-lines file: one context object per line") from None
    contexts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ClientError(f"{path}:{n}: invalid JSON ({exc})", "one JSON object per line") from None
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
        result = _evaluate_over_nats(args.nats_url, body)
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


def _evaluate_over_nats(nats_url: str, body: dict) -> dict:
    """`policy.evaluate` request-reply: the same request and response as the HTTP API."""
    import asyncio

    import nats
    from nats.errors import NoRespondersError, NoServersError
    from nats.errors import TimeoutError as NatsTimeout

    async def quiet(_exc: Exception) -> None:
        return None

    async def go() -> dict:
        try:
            nc = await nats.connect(nats_url, max_reconnect_attempts=1, connect_timeout=2, error_cb=quiet)
        except (NoServersError, OSError):
            raise ClientError(f"cannot reach NATS at {nats_url}", "start the system with `make run`, or pass --nats-url") from None
        try:
            msg = await nc.request("policy.evaluate", json.dumps(body).encode(), timeout=30)
        except NoRespondersError:
            raise ClientError("policy.evaluate: no service answers on NATS", "is the control plane running?") from None
        except NatsTimeout:
            raise ClientError("policy.evaluate: no reply within 30 s", "check the control plane's logs") from None
        finally:
            await nc.close()
        reply = json.loads(msg.data)
        code = (msg.headers or {}).get("Nats-Service-Error-Code")
        if code:
            message = (reply.get("error") or {}).get("message") or (msg.headers or {}).get("Nats-Service-Error", "")
            raise ClientError(f"policy.evaluate: error {code}: {message}", "")
        return reply

    return asyncio.run(go())


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
    with _client(args) as api:
        report = api.get("/api/v1/audit/verify")
    if report.get("ok"):
        print(f"audit chain intact: {report.get('checked', 0)} records verified")
        return 0
    print(f"audit chain BROKEN at seq {report.get('first_bad_seq')}: {report.get('reason')}", file=sys.stderr)
    return 1


def cmd_agents(args: argparse.Namespace) -> int:
    with _client(args) as api:
        agents = api.get("/api/v1/opa/agents")
    if not agents:
        print("no OPA agent has reported status yet")
        return 0
    rows = []
    for a in agents:
        for b in a["bundles"] or [{"name": "-", "active_revision": "-", "code": "", "message": ""}]:
            state = "ok" if not b.get("code") else f"{b['code']}: {b.get('message', '')[:60]}"
            rows.append([a["id"], b["name"], b.get("active_revision", ""), state,
                         time.strftime("%H:%M:%S", time.localtime(a["last_seen"]))])
    print(_table(rows, ["agent", "bundle", "active revision", "status", "last seen"]))
    return 0


def cmd_bundles(args: argparse.Namespace) -> int:
    with _client(args) as api:
        bundles = api.get("/api/v1/bundles")
    if not bundles:
        print("no bundle revision is active")
        return 0
    print(_table([[b["bundle"], b["target"], b["revision"], b["size"], b["etag"][:14] + '"', b.get("signed_by", ""),
                   time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b["activated_at"]))] for b in bundles],
                 ["bundle", "target", "revision", "bytes", "etag", "signed by", "activated"]))
    return 0


# -- stop, bench -----------------------------------------------------------------------------
def cmd_stop(args: argparse.Namespace) -> int:
    from controlplane.ops.supervisor import pid_file

    state_dir = Path(args.state_dir) if args.state_dir else Settings.from_env().state_dir
    path = pid_file(state_dir)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        raise ClientError(f"no running system recorded in {path}", "start one with `make run` or `groqpolicy up`") from None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        raise ClientError(f"process {pid} from {path} is not running (stale pid file removed)", "") from None
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    def client_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="control plane URL (default $GROQPOLICY_URL or http://127.0.0.1:8015)")
        p.add_argument("--token", help="bearer token (default $GROQPOLICY_TOKEN, else the admin token in <state>/tokens)")
        p.add_argument("--state-dir", help="local state dir, for the token file (default .state)")
        p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each API answer (default 120)")

    pol = sub.add_parser("policies", help="list, create and compile stored policies")
    pol_sub = pol.add_subparsers(dest="policies_command", metavar="ACTION")
    ls = pol_sub.add_parser("list", help="stored policies with type, tier, version and compile status")
    ls.add_argument("--type")
    ls.add_argument("--tier")
    ls.add_argument("--active", type=lambda v: v.lower() in ("1", "true", "yes"), default=None, metavar="true|false")
    client_opts(ls)
    ls.set_defaults(func=cmd_policies_list)
    cr = pol_sub.add_parser("create", help="store a policy from a .rego file (it must define `decision`)")
    cr.add_argument("file")
    cr.add_argument("--name")
    cr.add_argument("--type", required=True, help="policy type, e.g. security_policies")
    cr.add_argument("--tier", default="balanced", help="performance tier (nano, fast, balanced, premium, reasoning)")
    cr.add_argument("--principle", action="append", help="a constitutional principle id (repeatable)")
    client_opts(cr)
    cr.set_defaults(func=cmd_policies_create)
    co = pol_sub.add_parser("compile", help="compile one policy to WASM and measure it")
    co.add_argument("rule_id")
    client_opts(co)
    co.set_defaults(func=cmd_policies_compile)

    ev = sub.add_parser("evaluate", help="evaluate one context, or a JSON-lines file of contexts")
    ev.add_argument("--context", help="one context as a JSON object")
    ev.add_argument("--file", help="a JSON-lines file, one context per line (progress bar and summary)")
    ev.add_argument("--output", help="with --file: write every result as JSON lines here")
    ev.add_argument("--types", help="comma-separated policy types (default: all)")
    ev.add_argument("--tier", default="reasoning", help="performance tier (default reasoning: every policy applies)")
    ev.add_argument("--explain", action="store_true", help="ask for an explanation")
    ev.add_argument("--json", action="store_true", help="print the whole response as JSON")
    ev.add_argument("--via", choices=["http", "nats"], default="http",
                    help="http: POST /api/v1/evaluate; nats: request-reply on policy.evaluate (same shapes)")
    ev.add_argument("--nats-url", default=ClientSettings.from_env().nats_url)
    client_opts(ev)
    ev.set_defaults(func=cmd_evaluate)

    au = sub.add_parser("audit", help="the hash-chained audit trail")
    au_sub = au.add_subparsers(dest="audit_command", metavar="ACTION")
    tail = au_sub.add_parser("tail", help="recent audit records (-f to follow)")
    tail.add_argument("-n", "--lines", type=int, default=20)
    tail.add_argument("-f", "--follow", action="store_true")
    client_opts(tail)
    tail.set_defaults(func=cmd_audit_tail)
    ver = au_sub.add_parser("verify", help="check the whole hash chain")
    client_opts(ver)
    ver.set_defaults(func=cmd_audit_verify)

    ag = sub.add_parser("agents", help="OPA agents with their active bundle revision and last status")
    client_opts(ag)
    ag.set_defaults(func=cmd_agents)
    bu = sub.add_parser("bundles", help="active bundle revisions (rego for agents, wasm for the evaluator)")
    client_opts(bu)
    bu.set_defaults(func=cmd_bundles)

    st = sub.add_parser("stop", help="stop a system started with `groqpolicy up` / `make run`")
    st.add_argument("--state-dir")
    st.set_defaults(func=cmd_stop)

    be = sub.add_parser("bench", help="run the benchmark suite (peers side by side)")
    be.add_argument("--short", action="store_true", help="the short mode CI runs")
    be.add_argument("-k", help="only benchmarks matching this pytest expression")
    be.set_defaults(func=cmd_bench)
