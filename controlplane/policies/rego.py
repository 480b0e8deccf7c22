"""How a stored policy's Rego becomes a module of the `groqpolicy` bundle.

Users write any `package`; the control plane moves the module to `groqpolicy.rules.p_<rule id hex>`
so that policies never collide with each other or the library, and stay inside the bundle's root
(`groqpolicy`). The package line is replaced in place, so compiler messages keep the user's rows.
After the user's last line the control plane appends one rule with an `entrypoint: true`
annotation (`opa build -t wasm` compiles annotated rules as entrypoints):

    groqpolicy_decision := decision

and a second one that evaluates `decision` for each element of an input array, so a batch costs
one call into the WASM module (an undefined decision is `[]`, a defined one `[doc]`):

    groqpolicy_decisions := [found | some one in input; found := [d | d := decision] with input as one]

The policy must define `decision` (the decision document, see rego/README.md); OPA agents serve it
at `/v1/data/groqpolicy/rules/p_<hex>/decision`, the WASM module at `.../groqpolicy_decision`.
"""

from __future__ import annotations

import json
import re
import uuid

from controlplane.bundles.compiler import CompileError, CompileMessage

ROOT_PACKAGE = "groqpolicy.rules"
ENTRY_RULE = "groqpolicy_decision"
BATCH_RULE = "groqpolicy_decisions"
SOURCE_NAME = "opa_policy"  # how compiler messages name the user's text
_PACKAGE = re.compile(r"^(\s*)package\s+[^\s#]+[^\n#]*", re.MULTILINE)
_DECISION = re.compile(r"^\s*(default\s+)?decision\b", re.MULTILINE)
# Names of things that make an evaluation wait on the network (see bridge.opawasm BLOCKING_BUILTINS).
_MAY_BLOCK = ("http.send", "lib.groq", "net.lookup_ip_addr", "data.groqpolicy.policies", "data.groqpolicy.rules")


def package_for(rule_id: uuid.UUID) -> str:
    return f"{ROOT_PACKAGE}.p_{rule_id.hex}"


def decision_path(rule_id: uuid.UUID) -> str:
    """The agent-side path (`/v1/data/<path>`) of the policy's decision."""
    return package_for(rule_id).replace(".", "/") + "/decision"


def wasm_entrypoint(rule_id: uuid.UUID) -> str:
    return package_for(rule_id).replace(".", "/") + "/" + ENTRY_RULE


def wasm_batch_entrypoint(rule_id: uuid.UUID) -> str:
    """The entrypoint over an array of inputs: `[[decision] or [] for each]`."""
    return package_for(rule_id).replace(".", "/") + "/" + BATCH_RULE


def _fail(message: str, row: int = 1, code: str = "rego_parse_error") -> CompileError:
    return CompileError("check", [CompileMessage(stage="check", message=message, code=code, file=SOURCE_NAME, row=row, col=1)])


def bundle_module(rule_id: uuid.UUID, text: str, *, title: str, policy_type: str, tier: str) -> str:
    """The module as it goes into the bundle, or CompileError naming what is missing."""
    match = None
    for m in _PACKAGE.finditer(text):
        before = text[: m.start()]
        if all(not line.strip() or line.lstrip().startswith("#") for line in before.splitlines()):
            match = m
        break
    if match is None:
        return_row = 1
        raise _fail("package expected (a Rego module starts with `package <name>`)", row=return_row)
    if not _DECISION.search(text):
        raise _fail("the policy must define a `decision` rule (the decision document)", code="rego_type_error")
    rewritten = text[: match.start()] + f"{match.group(1)}package {package_for(rule_id)}" + text[match.end():]
    custom = json.dumps({"rule_id": str(rule_id), "policy_type": policy_type, "performance_tier": tier})
    return (
        rewritten.rstrip("\n")
        + "\n\n# METADATA\n"
        + f"# title: {json.dumps(title)}\n"
        + "# entrypoint: true\n"
        + f"# custom: {custom}\n"
        + f"{ENTRY_RULE} := decision\n"
        + "\n# METADATA\n"
        + f"# title: {json.dumps(title + ' (each input of a batch)')}\n"
        + "# entrypoint: true\n"
        + f"# custom: {custom}\n"
        + f"{BATCH_RULE} := [groqpolicy_found | some groqpolicy_one in input\n"
        + "\tgroqpolicy_found := [groqpolicy_d | groqpolicy_d := decision] with input as groqpolicy_one]\n"
    )


def may_block(text: str) -> bool:
    """True when evaluating the policy may call out (http.send): it then runs off the event loop."""
    return any(token in text for token in _MAY_BLOCK)


def relabel(exc: CompileError, filename: str) -> CompileError:
    """Compiler messages about the policy's temp file, renamed to `opa_policy`."""
    messages = [
        CompileMessage(stage=m.stage, message=m.message.replace(filename, SOURCE_NAME), code=m.code,
                       file=SOURCE_NAME if m.file.endswith(filename) else m.file, row=m.row, col=m.col)
        for m in exc.messages
    ]
    return CompileError(exc.stage, messages)
