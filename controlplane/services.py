"""The control plane's long-lived objects, built once per app and injected into handlers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TypeAlias

from litestar.di import NamedDependency

from controlplane.agents.decision_logs import DecisionLogStore
from controlplane.agents.status import StatusStore
from controlplane.bundles.compiler import Compiler, load_definitions
from controlplane.bundles.keys import SigningKey
from controlplane.bundles.keystore import ensure_signing_key
from controlplane.bundles.publisher import BundlePublisher
from controlplane.bundles.revisions import RevisionStore
from controlplane.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: RevisionStore
    decision_logs: DecisionLogStore
    statuses: StatusStore
    signing_key: SigningKey
    publisher: BundlePublisher
    startup_errors: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        store = RevisionStore(settings.state_dir)
        key = ensure_signing_key(settings)
        compiler = Compiler(settings.rego_root)
        return cls(
            settings=settings,
            store=store,
            decision_logs=DecisionLogStore(settings.state_dir),
            statuses=StatusStore(settings.state_dir),
            signing_key=key,
            publisher=BundlePublisher(compiler, store, key, settings.rego_root, overlay=settings.bundle_overlay()),
        )

    def publish_definitions(self, force: bool = False) -> list[str]:
        """Compile and activate the bundle definitions in `bundles/` whose sources changed."""
        definitions = load_definitions(self.settings.bundles_dir)
        return self.publisher.publish_definitions(definitions, force=force)


# How handlers ask for the services: `services: ServicesDep`.
ServicesDep: TypeAlias = NamedDependency[Services]
