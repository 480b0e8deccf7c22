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
from collections.abc import Sequence
from pathlib import Path

from bridge.opawasm import hostroute


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
    blocked = {h for s in sources for f in _rego_files(s) for h in hostroute.blocked_heads(f.read_text())}

    def rewrite_or_copy(src: str, dst: str) -> None:
        if src.endswith(".rego"):
            Path(dst).write_text(hostroute.rewrite(Path(src).read_text(), blocked))
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


def _rego_files(src: Path) -> list[Path]:
    files = [src] if src.is_file() else list(src.rglob("*.rego")) if src.is_dir() else []
    return [f for f in files if f.suffix == ".rego"]


def _needs(src: Path) -> bool:
    return any(hostroute.needs_rewrite(f.read_text()) for f in _rego_files(src))
