"""What goes into a bundle and which revision it is: bundle definitions (`bundles/<name>.toml`), the
source files they name, and the digest that names a revision (equal inputs, equal revision)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from bridge.kernel.errors import GroqPolicyError

# Test files never ship in a bundle: they would be loaded by agents as ordinary modules.
TEST_FILE_GLOB = "*_test.rego"


class BundleDefinition(msgspec.Struct, forbid_unknown_fields=True):
    """What goes into one bundle: read from `bundles/<name>.toml`."""

    name: str
    sources: list[str]  # directories or files, relative to the definition file's project root
    roots: list[str] = msgspec.field(default_factory=list)
    description: str = ""
    scope: str | None = None  # signature scope; agents configured with the same scope verify it
    run_tests: bool = True

def load_definition(path: Path) -> BundleDefinition:
    try:
        return msgspec.toml.decode(path.read_bytes(), type=BundleDefinition)
    except msgspec.ValidationError as exc:
        raise GroqPolicyError(f"{path}: invalid bundle definition: {exc}") from exc
    except (OSError, msgspec.DecodeError) as exc:
        raise GroqPolicyError(f"{path}: cannot read bundle definition: {exc}") from exc


def load_definitions(bundles_dir: Path) -> list[BundleDefinition]:
    return [load_definition(p) for p in sorted(bundles_dir.glob("*.toml"))]


def source_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in {".rego", ".json", ".yaml", ".yml"})


def tree_hash(sources: Sequence[Path], base: Path) -> Any:
    h = hashlib.sha256()
    for src in sources:
        for f in source_files(src):
            h.update(str(f.relative_to(base) if f.is_relative_to(base) else f).encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
    return h


def digest_with(h: Any, overlay: dict | None, metadata: dict | None) -> str:
    if overlay:
        h.update(b"overlay\0" + json.dumps(overlay, sort_keys=True).encode())
    if metadata:
        h.update(b"metadata\0" + json.dumps(metadata, sort_keys=True).encode())
    return str(h.hexdigest())


def source_digest(sources: Sequence[Path], base: Path, overlay: dict | None = None, metadata: dict | None = None) -> str:
    """A digest over every source file's relative path and bytes (and the data overlay and the
    manifest metadata): equal inputs, equal revision."""
    return digest_with(tree_hash(sources, base), overlay, metadata)


def revision_for(name: str, digest: str) -> str:
    return f"{name}-{digest[:16]}"
