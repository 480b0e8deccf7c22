"""Compile -> sign -> activate: how Rego becomes the revision agents and evaluators receive."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from bridge.opabundle.archive import write_bundle
from bridge.opabundle.keys import SigningKey
from bridge.opabundle.signing import sign_bundle
from controlplane.bundles.artifacts import CompiledBundle
from controlplane.bundles.compiler import Compiler
from controlplane.bundles.definitions import BundleDefinition, revision_for, source_digest
from controlplane.bundles.revisions import Revision, RevisionStore

log = logging.getLogger(__name__)


class BundlePublisher:
    def __init__(self, compiler: Compiler, store: RevisionStore, key: SigningKey, source_root: Path, overlay: dict | None = None) -> None:
        self.compiler = compiler
        self.store = store
        self.key = key
        self.source_root = source_root
        self.overlay = overlay  # deployment data merged into every bundle (see Compiler.compile)

    def sign(self, compiled: CompiledBundle, scope: str | None = None) -> dict[str, bytes]:
        """Both artifacts, signed with the control plane's key, as tar.gz bytes."""
        return {
            "rego": write_bundle(sign_bundle(compiled.rego_files, self.key, scope=scope)),
            "wasm": write_bundle(sign_bundle(compiled.wasm_files, self.key, scope=scope)),
        }

    def publish(self, compiled: CompiledBundle, scope: str | None = None) -> dict[str, Revision]:
        archives = self.sign(compiled, scope=scope)
        revs = self.store.activate(compiled.name, compiled.revision, archives, signed_by=self.key.kid)
        log.info("bundle %s: activated revision %s", compiled.name, compiled.revision)
        return revs

    def is_current(self, definition: BundleDefinition) -> bool:
        """True when the active revision was built from exactly these sources (restart reuses it)."""
        active = self.store.get(definition.name, "rego")
        if active is None:
            return False
        sources = [(self.source_root / s).resolve() for s in definition.sources]
        if not all(s.exists() for s in sources):
            return False
        digest = source_digest(sources, self.source_root.resolve(), self.overlay)
        return active[0].revision == revision_for(definition.name, digest)

    def publish_definitions(self, definitions: Sequence[BundleDefinition], force: bool = False) -> list[str]:
        """Compile and publish every definition whose sources changed; returns the published names."""
        published = []
        for definition in definitions:
            if not force and self.is_current(definition):
                continue
            compiled = self.compiler.compile(definition, base=self.source_root, overlay=self.overlay)
            self.publish(compiled, scope=definition.scope)
            published.append(definition.name)
        return published
