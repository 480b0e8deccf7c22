"""Route the pattern builtins of a Rego module to the host in the wasm target.

OPA's wasm compiler always compiles `glob.match`, `regex.match`, `regex.is_valid` and
`regex.find_all_string_submatch_n` to its own library, which recompiles the pattern on every
evaluation (its pattern cache lives on the heap `opa_eval` resets). There is no `opa build` switch
to send a natively compiled builtin to the host, so before `opa build -t wasm` the calls are
renamed in the Rego *source* to custom builtins (`HOST_NAMES`), declared in the capabilities the
build gets (`declare`); the compiled module then imports them through `opa_builtin*` and the host
answers them with its compiled-pattern caches (`builtins/globs.py`). Only the wasm target is
rewritten: the rego bundles agents load keep the sources as written.

`rewrite` works on tokens of a small Rego lexer (strings, raw strings and comments are skipped) and
renames a builtin's name only where it is surely the builtin: a whole reference (not part of
`x.glob.match` nor followed by `.`/`[`), called (`(` next) or named in a `with ... as ...`. A module
that could give the head another meaning (an import bound to `glob` or `regex`, a rule whose head
starts with `glob.` or `regex.`) keeps those calls as they are: they still work, on the wasm
library's own code.
"""

from __future__ import annotations

import copy
import re
from typing import Any

PREFIX = "groqpolicy_host."
ROUTED = ("glob.match", "regex.match", "regex.is_valid", "regex.find_all_string_submatch_n")
HOST_NAMES = {name: PREFIX + name for name in ROUTED}
_ORIGINAL = {v: k for k, v in HOST_NAMES.items()}

_TOKEN = re.compile(
    r"""(?P<ws>\s+)|(?P<comment>\#[^\n]*)|(?P<string>"(?:[^"\\\n]|\\.)*")|(?P<raw>`[^`]*`)"""
    r"""|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<other>.)""",
    re.DOTALL,
)
_OPEN, _CLOSE = "{[(", "}])"


def host_name(name: str) -> str:
    """The custom builtin the wasm target calls instead of `name`."""
    return HOST_NAMES[name]


def original_name(name: str) -> str:
    """The Rego builtin a host name stands for (names that are not routed come back unchanged)."""
    return _ORIGINAL.get(name, name)


def needs_rewrite(text: str) -> bool:
    """Whether `text` may call a routed builtin (a cheap test before lexing)."""
    return any(name in text for name in ROUTED)


def _tokens(text: str) -> list[tuple[str, str, int, int]]:
    """(kind, text, start, end) for every token; whitespace and comments included."""
    return [(m.lastgroup or "other", m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def blocked_heads(text: str) -> set[str]:
    """The heads a module could give another meaning (`_blocked_heads`). A rule shadows a builtin in
    its whole package, whichever file it is in: a build passes the heads blocked in any of its
    files to `rewrite` of every file."""
    return _blocked_heads(_tokens(text)) if needs_rewrite(text) else set()


def _blocked_heads(toks: list[tuple[str, str, int, int]]) -> set[str]:
    """Heads (`glob`, `regex`) that another meaning could take in this module: an import bound to
    the name, or a rule head starting with it (first on its line or after `default`, outside any
    bracket)."""
    heads = {name.split(".", 1)[0] for name in ROUTED}
    blocked: set[str] = set()
    depth, line_start, prev = 0, True, ""
    for i, (kind, tok, _, _) in enumerate(toks):
        if kind in ("ws", "comment"):
            line_start = line_start or "\n" in tok
            continue
        if kind == "ident" and tok in heads and depth == 0 and (line_start or prev == "default"):
            blocked.add(tok)
        prev = tok
        if kind == "ident" and tok == "import":
            blocked.add(_import_alias(toks, i + 1))
        if tok in _OPEN:
            depth += 1
        elif tok in _CLOSE:
            depth = max(0, depth - 1)
        line_start = False
    return blocked & heads


def _import_alias(toks: list[tuple[str, str, int, int]], i: int) -> str:
    """The name `import <ref> [as <alias>]` binds, from the token after `import`: the ref has no
    whitespace inside, so it ends at the first whitespace."""
    n = len(toks)
    while i < n and toks[i][0] == "ws":
        i += 1
    alias = ""
    while i < n and toks[i][0] not in ("ws", "comment"):
        if toks[i][0] == "ident":
            alias = toks[i][1]
        i += 1
    j = i
    while j < n and toks[j][0] in ("ws", "comment") and "\n" not in toks[j][1]:
        j += 1
    if j + 2 < n and toks[j][1] == "as":
        k = j + 1
        while k < n and toks[k][0] == "ws":
            k += 1
        if k < n and toks[k][0] == "ident":
            alias = toks[k][1]
    return alias


def rewrite(text: str, blocked: set[str] | frozenset[str] = frozenset()) -> str:
    """`text` with every sure call of a routed builtin renamed to its host name; none whose head is
    in `blocked` (the heads the build's other modules give another meaning) or blocked here."""
    if not needs_rewrite(text):
        return text
    toks = _tokens(text)
    blocked = _blocked_heads(toks) | set(blocked)
    out: list[str] = []
    i, n = 0, len(toks)
    prev_sig = ""  # the previous significant token's text
    while i < n:
        kind, tok = toks[i][0], toks[i][1]
        if kind == "ident" and tok not in blocked and i + 2 < n and toks[i + 1][1] == "." and prev_sig != ".":
            name = tok + "." + toks[i + 2][1]
            if name in HOST_NAMES and toks[i + 2][0] == "ident":
                glued_after = toks[i + 3][1] if i + 3 < n else ""
                if glued_after not in (".", "[") and (glued_after == "(" or prev_sig in ("with", "as")):
                    out.append(HOST_NAMES[name])
                    prev_sig = toks[i + 2][1]
                    i += 3
                    continue
        out.append(tok)
        if kind not in ("ws", "comment"):
            prev_sig = tok
        i += 1
    return "".join(out)


def declare(capabilities: dict[str, Any]) -> dict[str, Any]:
    """`capabilities` (`opa capabilities` JSON) with the host names declared as custom builtins,
    each with the declaration of the builtin it stands for."""
    caps = copy.deepcopy(capabilities)
    builtins = caps.setdefault("builtins", [])
    known = {b.get("name") for b in builtins}
    originals = {b.get("name"): b for b in builtins}
    for name, host in HOST_NAMES.items():
        if host in known or name not in originals:
            continue
        entry = {"name": host, "decl": copy.deepcopy(originals[name]["decl"])}
        builtins.append(entry)
    return caps
