"""`groqpolicy`: one subcommand per job. Errors are one readable line plus a hint, exit code 1.

This module parses the whole command line and runs the commands that need no running system (`up`,
`serve`, `compile`, `keys`, `opa-config`); the ones that talk to a running system are in
`controlplane.ops.commands`. Each command imports what it needs inside its own function: the app,
the compiler, uvicorn and the supervisor take far longer to import than argument parsing, and
`groqpolicy --help` or a typo should answer at once.
"""

from __future__ import annotations

import argparse
import functools
import json
import socket
import sys
from pathlib import Path
from typing import Any

from bridge.kernel.config import ClientSettings, Settings
from bridge.kernel.errors import GroqPolicyError
from controlplane.ops import commands, impact_commands, job_commands, judge
from controlplane.ops.client import ClientError


def _cmd_keys_generate(args: argparse.Namespace) -> int:
    from bridge.opabundle.keys import generate_keypair, write_keypair

    key = generate_keypair(alg=args.alg, kid=args.kid)
    private_path, public_path = write_keypair(key, Path(args.out_dir))
    print(f"kid:         {key.kid}")
    print(f"algorithm:   {key.alg}")
    print(f"private key: {private_path}")
    print(f"public key:  {public_path}")
    print(f"use it:      GROQPOLICY_SIGNING_KEY_FILE={private_path} GROQPOLICY_SIGNING_KID={key.kid}")
    return 0


def _cmd_compile(args: argparse.Namespace) -> int:
    from controlplane.bundles.compiler import Compiler
    from controlplane.bundles.definitions import load_definitions
    from controlplane.bundles.findings import CompileError

    settings = Settings.from_env()
    bundles_dir = Path(args.bundles_dir) if args.bundles_dir else settings.bundles_dir
    definitions = load_definitions(bundles_dir)
    if not definitions:
        raise ClientError(f"no bundle definitions (*.toml) in {bundles_dir}", "create bundles/<name>.toml with name and sources")
    compiler = Compiler(settings.rego_root)
    failed = 0
    for definition in definitions:
        try:
            compiled = compiler.compile(definition, base=settings.rego_root)
        except CompileError as exc:
            failed += 1
            print(f"{definition.name}: {exc.stage} failed", file=sys.stderr)
            for m in exc.messages:
                print(f"  {m}", file=sys.stderr)
            continue
        passed = sum(t.passed for t in compiled.tests)
        print(
            f"{definition.name}: revision {compiled.revision}, {passed} tests passed, "
            f"{len(compiled.entrypoints)} entrypoints ({', '.join(compiled.entrypoints)})"
        )
    return 1 if failed else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from controlplane.app import create_app

    counts = None
    if args.balance_fd is not None:  # before the app is built: a wrong descriptor is told at once
        from controlplane.infra.listener import AcceptCounts

        try:
            if args.fd is None:
                raise ValueError("needs --fd, the socket it balances")
            counts = AcceptCounts(args.balance_fd, args.slot)
        except (OSError, ValueError) as exc:
            print(f"serve: --balance-fd {args.balance_fd} --slot {args.slot}: {exc}", file=sys.stderr)
            return 2
    overrides: dict[str, Any] = {}
    if args.port:
        overrides["port"] = args.port
    if args.state_dir:
        overrides["state_dir"] = Path(args.state_dir)
    settings = Settings.from_env(**overrides)
    app = create_app(settings, freeze_heap=True)
    # long polls hold requests open for up to a minute: do not wait for them on shutdown
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=2)
    # with --fd: a socket the supervisor keeps listening across our restarts (controlplane.ops.system);
    # with --balance-fd too: other processes serve it as well, each accepting its share (controlplane.infra.listener)
    from controlplane.ops.serving import BalancedServer, Server

    if counts is not None:
        server: uvicorn.Server = BalancedServer(config, socket.socket(fileno=args.fd), counts)
        server.run()
    else:
        server = Server(config)
        server.run(sockets=None if args.fd is None else [socket.socket(fileno=args.fd)])
    return 0 if server.started else 3  # uvicorn's own exit status for a start-up that failed


def _cmd_up(args: argparse.Namespace) -> int:
    from controlplane.ops.supervisor import run_system

    return run_system(state_dir=Path(args.state_dir) if args.state_dir else None)


def _cmd_opa_config(args: argparse.Namespace) -> int:
    from controlplane.agents.config import AgentConfigOptions, render_agent_config, to_yaml
    from controlplane.auth.tokens import ensure_tokens
    from controlplane.bundles.keystore import ensure_signing_key

    settings = Settings.from_env()
    key = ensure_signing_key(settings)
    agent_token = ensure_tokens(settings).agent_token()  # the config carries the least-privileged agent token
    config = render_agent_config(
        base_url=settings.base_url, kid=key.kid, algorithm=key.alg,
        public_key_pem=key.verification_key().public_pem,
        options=AgentConfigOptions(bundle=args.bundle, agent_id=args.agent_id or "", token=agent_token.secret if agent_token else ""),
    )
    print(json.dumps(config, indent=2) if args.json else to_yaml(config), end="")
    return 0


def _client_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="control plane URL (default $GROQPOLICY_URL or http://127.0.0.1:8015)")
    p.add_argument("--token", help="bearer token (default $GROQPOLICY_TOKEN, else the admin token in <state>/tokens)")
    p.add_argument("--state-dir", help="local state dir, for the token file (default .state)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each API answer (default 120)")


def _add_policies(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pol = sub.add_parser("policies", help="list, create, show and compile stored policies")
    pol_sub = pol.add_subparsers(dest="policies_command", metavar="ACTION")
    ls = pol_sub.add_parser("list", help="stored policies with type, tier, version and compile status")
    ls.add_argument("--type")
    ls.add_argument("--tier")
    ls.add_argument("--active", type=lambda v: v.lower() in ("1", "true", "yes"), default=None, metavar="true|false")
    _client_opts(ls)
    ls.set_defaults(func=commands.cmd_policies_list)
    cr = pol_sub.add_parser("create", help="store a policy from a .rego file (it must define `decision`)")
    cr.add_argument("file")
    cr.add_argument("--name")
    cr.add_argument("--type", required=True, help="policy type, e.g. security_policies")
    cr.add_argument("--tier", default="balanced", help="performance tier (nano, fast, balanced, premium, reasoning)")
    cr.add_argument("--principle", action="append", help="a constitutional principle id (repeatable)")
    cr.add_argument("--tests", metavar="FILE", help="the policy's own opa tests (.rego); they must pass to certify it")
    cr.add_argument("--review", choices=("premium", "reasoning"), help="have a model at this tier review the policy")
    cr.add_argument("--override", metavar="REASON", help="activate even if the model review denies it (recorded)")
    _client_opts(cr)
    cr.set_defaults(func=commands.cmd_policies_create)
    sh = pol_sub.add_parser("show", help="one policy and the certificate that certified it")
    sh.add_argument("rule_id")
    _client_opts(sh)
    sh.set_defaults(func=commands.cmd_policies_show)
    co = pol_sub.add_parser("compile", help="compile one policy to WASM and measure it")
    co.add_argument("rule_id")
    _client_opts(co)
    co.set_defaults(func=commands.cmd_policies_compile)


def _add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser("evaluate", help="evaluate one context, or a JSON-lines file of contexts")
    ev.add_argument("--context", help="one context as a JSON object")
    ev.add_argument("--file", help="a JSON-lines file, one context per line (progress bar and summary)")
    ev.add_argument("--output", help="with --file: write every result as JSON lines here")
    ev.add_argument("--types", help="comma-separated policy types (default: all)")
    ev.add_argument("--tier", default="reasoning", help="performance tier (default reasoning: every policy applies)")
    ev.add_argument("--explain", action="store_true", help="ask for an explanation")
    ev.add_argument("--json", action="store_true", help="print the whole response as JSON")
    ev.add_argument("--via", choices=["http", "nats", "batch"], default="http",
                    help="http: POST /api/v1/evaluate; nats: request-reply on policy.evaluate (same shapes); "
                    "batch (with --file): one evaluation job, judgments through the Groq Batch API at its price")
    ev.add_argument("--nats-url", default=ClientSettings.from_env().nats_url)
    _client_opts(ev)
    ev.set_defaults(func=job_commands.cmd_evaluate)


def _add_audit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    au = sub.add_parser("audit", help="the hash-chained audit trail")
    au_sub = au.add_subparsers(dest="audit_command", metavar="ACTION")
    tail = au_sub.add_parser("tail", help="recent audit records (-f to follow)")
    tail.add_argument("-n", "--lines", type=int, default=20)
    tail.add_argument("-f", "--follow", action="store_true")
    _client_opts(tail)
    tail.set_defaults(func=commands.cmd_audit_tail)
    ver = au_sub.add_parser("verify", help="check the whole chain: hashes, links, signatures, the last checkpoint")
    _client_opts(ver)
    ver.set_defaults(func=commands.cmd_audit_verify)


def _add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _add_policies(sub)
    _add_evaluate(sub)
    _add_audit(sub)
    impact_commands.add_parsers(sub, _client_opts)
    judge.add_judge(sub)

    ag = sub.add_parser("agents", help="OPA agents with their active bundle revision and last status")
    _client_opts(ag)
    ag.set_defaults(func=commands.cmd_agents)
    bu = sub.add_parser("bundles", help="active bundle revisions (rego for agents, wasm for the evaluator)")
    _client_opts(bu)
    bu.set_defaults(func=commands.cmd_bundles)

    da = sub.add_parser("dashboard", help="print a one-time dashboard sign-in link (valid 5 minutes)")
    _client_opts(da)
    da.add_argument("--open", action="store_true", help="open it in the default browser instead of printing it")
    da.set_defaults(func=commands.cmd_dashboard)
    tk = sub.add_parser("token", help="print a local token (for curl against the OPA agent: `groqpolicy token`)")
    tk.add_argument("name", nargs="?", default="evaluate", help="the token's name in <state>/tokens (default: evaluate)")
    tk.add_argument("--state-dir")
    tk.set_defaults(func=commands.cmd_token)

    st = sub.add_parser("stop", help="stop a system started with `groqpolicy up` / `make run`")
    st.add_argument("--state-dir")
    st.set_defaults(func=commands.cmd_stop)

    be = sub.add_parser("bench", help="run the benchmark suite (peers side by side)")
    be.add_argument("--short", action="store_true", help="the short mode CI runs")
    be.add_argument("-k", help="only benchmarks matching this pytest expression")
    be.set_defaults(func=commands.cmd_bench)


def _print_help(parser: argparse.ArgumentParser, _args: argparse.Namespace) -> int:
    parser.print_help()
    return 2


def _add_local_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("up", help="start the whole system on embedded defaults (Ctrl-C stops everything)")
    up.add_argument("--state-dir", help="where state lives (default: .state)")
    up.set_defaults(func=_cmd_up)

    serve = sub.add_parser("serve", help="run only the control plane (:8015)")
    serve.add_argument("--port", type=int)
    serve.add_argument("--state-dir")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--fd", type=int, help="serve on this inherited listening socket (what `groqpolicy up` passes)")
    serve.add_argument("--balance-fd", type=int, help="the connection counts shared with the other processes on --fd")
    serve.add_argument("--slot", type=int, default=0, help="this process's place in --balance-fd (0, 1, ...)")
    serve.set_defaults(func=_cmd_serve)

    comp = sub.add_parser("compile", help="check, test and build every bundle definition in bundles/")
    comp.add_argument("--bundles-dir")
    comp.set_defaults(func=_cmd_compile)

    keys = sub.add_parser("keys", help="signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    gen = keys_sub.add_parser("generate", help="create a key pair for signing bundles")
    gen.add_argument("--alg", default="RS256", choices=["RS256", "ES256"])
    gen.add_argument("--kid", default="groqpolicy", help="key id agents reference in signing.keyid")
    gen.add_argument("--out-dir", default="keys", help="directory for the PEM files (default: ./keys)")
    gen.set_defaults(func=_cmd_keys_generate)

    cfg = sub.add_parser("opa-config", help="print a ready OPA agent configuration for this control plane")
    cfg.add_argument("--bundle", default="groqpolicy")
    cfg.add_argument("--agent-id")
    cfg.add_argument("--json", action="store_true", help="JSON instead of YAML")
    cfg.set_defaults(func=_cmd_opa_config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groqpolicy", description="OPA policies with fast GroqCloud judgments.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_local_commands(sub)
    _add_client_commands(sub)
    # a group without its action prints the group's own help
    for group in sub.choices.values():
        if group._subparsers is not None and group.get_default("func") is None:
            group.set_defaults(func=functools.partial(_print_help, group))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except GroqPolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if hint := getattr(exc, "hint", ""):
            print(f"hint: {hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
