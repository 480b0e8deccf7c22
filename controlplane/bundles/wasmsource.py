"""What `opa build -t wasm` is given: the sources with the pattern builtins routed to the host.

`bridge.opawasm.hostroute` says why and how (a rename of `glob.match`, `regex.match`, ... in the
Rego text, and their host names declared as custom builtins). This module applies it to a build:
the source tree is copied with every `.rego` file that calls one of them rewritten, under the same
relative paths (so data paths and the bundle's file names stay those of the sources), and the
capabilities get the declarations. The rego target, the one agents load, is built from the sources
as written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from bridge.opawasm import hostroute


def rego_target(wasm_files: Mapping[str, bytes], cwd: Path) -> dict[str, bytes] | None:
    """What `opa build -t rego` makes of the same sources, from what `opa build -t wasm` made of them:
    the same files in the same order (`/data.json` merged by OPA, each module, `/.manifest`) without
    the wasm modules and the manifest's `wasm` entries, and each module as the source text (the wasm
    target holds it formatted, and routed). A write then runs one whole-library `opa build` instead
    of two; `opa check --strict` still compiles the text as written. None when a module's source is
    not under `cwd` (the caller builds the rego target itself then)."""
    manifest = json.loads(wasm_files.get("/.manifest", b"{}"))
    modules = {w.get("module") for w in manifest.get("wasm", [])}
    manifest.pop("wasm", None)
    out: dict[str, bytes] = {}
    for path, content in wasm_files.items():
        if path in modules:
            continue
        if path == "/.manifest":
            newline = b"\n" if content.endswith(b"\n") else b""
            content = json.dumps(manifest, separators=(",", ":"), ensure_ascii=False).encode() + newline
        elif path.endswith(".rego"):
            source = (cwd / path.lstrip("/")).resolve()
            if not source.is_relative_to(cwd.resolve()) or not source.is_file():
                return None
            content = source.read_bytes()
        out[path] = content
    return out


def capabilities(current: str | bytes) -> bytes:
    """`opa capabilities` JSON with the host names declared."""
    return json.dumps(hostroute.declare(json.loads(current))).encode()


def routed_tree(sources: Sequence[Path], cwd: Path, into: Path) -> tuple[list[Path], Path]:
    """The sources (files or directories under `cwd`) copied into `into` with their Rego rewritten;
    the copies and the directory to run `opa build` in. Sources that need no rewrite are used as they
    are, and so is everything when nothing needs it."""
    if not any(_needs(s) for s in sources):
        return list(sources), cwd
    # a rule named like a builtin's head shadows the builtin in its whole package, whichever file
    # defines it: the heads blocked anywhere in the build are blocked everywhere (routing less is
    # only slower, routing a shadowed call would change an answer)
    blocked = frozenset(h for s in sources for f in _rego_files(s) for h in _blocked_heads(f.read_text()))

    def rewrite_or_copy(src: str, dst: str) -> None:
        if src.endswith(".rego"):
            Path(dst).write_text(_rewritten(Path(src).read_text(), blocked))
        else:
            shutil.copy2(src, dst)

    copies: list[Path] = []
    for index, src in enumerate(sources):
        src = src.resolve()
        rel = src.relative_to(cwd) if src.is_relative_to(cwd) else Path(f"_outside{index}") / src.name
        dst = into / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, copy_function=rewrite_or_copy)
        else:
            rewrite_or_copy(str(src), str(dst))
        copies.append(dst)
    return copies, into


# Every write builds the whole library again, and lexing its modules is Python that delays the start
# of `opa build -t wasm`, the longest stage of a write, while the other stages' threads want the
# GIL too: each module text is lexed once (by content; a changed file is a new key).
@lru_cache(maxsize=128)
def _blocked_heads(text: str) -> frozenset[str]:
    return frozenset(hostroute.blocked_heads(text))


@lru_cache(maxsize=128)
def _rewritten(text: str, blocked: frozenset[str]) -> str:
    return hostroute.rewrite(text, blocked)


def _rego_files(src: Path) -> list[Path]:
    files = [src] if src.is_file() else list(src.rglob("*.rego")) if src.is_dir() else []
    return [f for f in files if f.suffix == ".rego"]


def _needs(src: Path) -> bool:
    return any(hostroute.needs_rewrite(f.read_text()) for f in _rego_files(src))
