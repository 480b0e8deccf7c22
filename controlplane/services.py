"""The control plane's long-lived objects, built once per app and injected into handlers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TypeAlias

from litestar.di import NamedDependency

from bridge.kernel.config import Settings
from bridge.opabundle.keys import SigningKey
from controlplane.agents.decision_logs import DecisionLogStore
from controlplane.agents.status import StatusStore
from controlplane.audit.trail import AuditTrail
from controlplane.auth.tokens import TokenSet, ensure_tokens
from controlplane.bundles.compiler import Compiler, load_definitions
from controlplane.bundles.keystore import ensure_signing_key
from controlplane.bundles.publisher import BundlePublisher
from controlplane.bundles.revisions import RevisionStore
from controlplane.evaluation.runtime import PolicyRuntime

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: RevisionStore
    decision_logs: DecisionLogStore
    statuses: StatusStore
    signing_key: SigningKey
    publisher: BundlePublisher
    runtime: PolicyRuntime  # NATS, policy store, in-process evaluator, evaluation pipeline
    tokens: TokenSet | None = None  # bearer tokens and scopes (controlplane.auth); None refuses everyone
    audit: AuditTrail | None = None  # attached at start, once NATS is connected (controlplane.audit.wiring)
    startup_errors: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        store = RevisionStore(settings.state_dir)
        key = ensure_signing_key(settings)
        compiler = Compiler(settings.rego_root)
        publisher = BundlePublisher(compiler, store, key, settings.rego_root, overlay=settings.bundle_overlay())
        return cls(
            settings=settings,
            store=store,
            decision_logs=DecisionLogStore(settings.state_dir),
            statuses=StatusStore(settings.state_dir),
            signing_key=key,
            publisher=publisher,
            runtime=PolicyRuntime(settings, publisher, key),
            tokens=ensure_tokens(settings),
        )

    def publish_definitions(self, force: bool = False) -> list[str]:
        """Compile and activate the bundle definitions in `bundles/` whose sources changed."""
        definitions = load_definitions(self.settings.bundles_dir)
        # stored policies ship inside the library bundle (see controlplane.policies.bundler)
        return self.runtime.bundler.publish_definitions(definitions, self.runtime.active_modules(), force=force)


# How handlers ask for the services: `services: ServicesDep`.
ServicesDep: TypeAlias = NamedDependency[Services]
