"""`groqpolicy`: one subcommand per job. Errors are one readable line plus a hint, exit code 1."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bridge.kernel.errors import GroqPolicyError


class CliError(Exception):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


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
    from bridge.kernel.config import Settings
    from controlplane.bundles.compiler import CompileError, Compiler, load_definitions

    settings = Settings.from_env()
    bundles_dir = Path(args.bundles_dir) if args.bundles_dir else settings.bundles_dir
    definitions = load_definitions(bundles_dir)
    if not definitions:
        raise CliError(f"no bundle definitions (*.toml) in {bundles_dir}", "create bundles/<name>.toml with name and sources")
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

    from bridge.kernel.config import Settings
    from controlplane.app import create_app

    overrides: dict = {}
    if args.port:
        overrides["port"] = args.port
    if args.state_dir:
        overrides["state_dir"] = Path(args.state_dir)
    settings = Settings.from_env(**overrides)
    app = create_app(settings, freeze_heap=True)
    # long polls hold requests open for up to a minute: do not wait for them on shutdown
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, access_log=False,
                timeout_graceful_shutdown=2)
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from controlplane.ops.supervisor import run_system

    return run_system(state_dir=Path(args.state_dir) if args.state_dir else None)


def _cmd_opa_config(args: argparse.Namespace) -> int:
    from bridge.kernel.config import Settings
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groqpolicy", description="OPA policies with fast GroqCloud judgments.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = sub.add_parser("up", help="start the whole system on embedded defaults (Ctrl-C stops everything)")
    up.add_argument("--state-dir", help="where state lives (default: .state)")
    up.set_defaults(func=_cmd_up)

    serve = sub.add_parser("serve", help="run only the control plane (:8015)")
    serve.add_argument("--port", type=int)
    serve.add_argument("--state-dir")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
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

    from controlplane.ops.commands import add_parsers

    add_parsers(sub)
    # a group without its action prints the group's own help
    for name, group in sub.choices.items():
        if group._subparsers is not None and group.get_default("func") is None:
            group.set_defaults(func=lambda _args, g=group: (g.print_help(), 2)[1])
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
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    except GroqPolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if hint := getattr(exc, "hint", ""):
            print(f"hint: {hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
