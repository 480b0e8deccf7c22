"""Gauges derived at scrape time from what the control plane already holds: the active bundle
revisions, the OPA agents' status reports, the decision-log count, the audit writer's relinks and
which compiler's code the in-process evaluator serves.

The stores live in packages that record their own metrics through `recorders` (bundles, agents,
audit), so this package sits below them and cannot import them: `StoreGauges` names what it reads
as Protocols, and the composition root (`controlplane.services`) hands it the stores themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class RevisionInfo(Protocol):
    """One active or past bundle revision (controlplane.bundles.revisions.Revision)."""

    @property
    def bundle(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def revision(self) -> str: ...
    @property
    def activated_at(self) -> float: ...


class Revisions(Protocol):
    """The bundle revisions agents download (controlplane.bundles.revisions.RevisionStore)."""

    def bundles(self) -> Sequence[RevisionInfo]: ...
    def history(self, bundle: str) -> Sequence[RevisionInfo]: ...


class BundleReport(Protocol):
    """An agent's report on one bundle (controlplane.agents.status.BundleStatus)."""

    @property
    def name(self) -> str: ...
    @property
    def active_revision(self) -> str: ...
    @property
    def code(self) -> str: ...
    @property
    def errors(self) -> list: ...


class AgentReport(Protocol):
    """An agent's latest status (controlplane.agents.status.AgentSummary)."""

    @property
    def id(self) -> str: ...
    @property
    def last_seen(self) -> float: ...
    @property
    def reports(self) -> int: ...
    @property
    def bundles(self) -> Sequence[BundleReport]: ...


class Statuses(Protocol):
    def agents(self) -> Sequence[AgentReport]: ...


class Counted(Protocol):
    """Decision logs received (controlplane.agents.decision_logs.DecisionLogStore)."""

    @property
    def total(self) -> int: ...


class Relinks(Protocol):
    """The audit trail's writer (controlplane.audit.writer.TrailWriter)."""

    @property
    def conflicts(self) -> int: ...

    @property
    def backlog(self) -> int: ...

    def backlog_wait_s(self) -> float: ...


class Compiled(Protocol):
    """The in-process evaluator (bridge.opawasm.WasmEvaluator): a revision is served on the baseline
    compiler's code, slower, from a policy write until its serving compile ends."""

    @property
    def on_baseline(self) -> bool: ...

    @property
    def baseline_seconds(self) -> float: ...

    @property
    def baseline_loads(self) -> int: ...


class StoreGauges:
    """A Prometheus collector over the stores; `audit_writer` gives the writer once the trail has
    started (None before: no audit gauge then); `evaluator`, the in-process evaluator, if any."""

    def __init__(self, revisions: Revisions, statuses: Statuses, decision_logs: Counted,
                 audit_writer: Callable[[], Relinks | None], evaluator: Compiled | None = None) -> None:
        self.revisions, self.statuses, self.decision_logs = revisions, statuses, decision_logs
        self.audit_writer, self.evaluator = audit_writer, evaluator

    def collect(self) -> Iterator[Metric]:
        yield from self._bundles()
        yield from self._agents()
        yield from self._audit()
        yield from self._evaluator()

    def _bundles(self) -> Iterator[Metric]:
        store = self.revisions
        active = GaugeMetricFamily("groqpolicy_bundle_active_info", "Active bundle revision per bundle and target (value 1)",
                                   labels=["bundle", "target", "revision"])
        activated = GaugeMetricFamily("groqpolicy_bundle_activated_timestamp_seconds", "When the active revision was activated",
                                      labels=["bundle", "target"])
        revisions = GaugeMetricFamily("groqpolicy_bundle_revisions", "Revisions kept in history per bundle", labels=["bundle"])
        bundles = list(store.bundles())
        for r in bundles:
            active.add_metric([r.bundle, r.target, r.revision], 1)
            activated.add_metric([r.bundle, r.target], r.activated_at)
        for name in sorted({r.bundle for r in bundles}):
            revisions.add_metric([name], len({h.revision for h in store.history(name)}))
        yield active
        yield activated
        yield revisions

    def _agents(self) -> Iterator[Metric]:
        agents = self.statuses.agents()
        seen = GaugeMetricFamily("groqpolicy_agent_last_seen_timestamp_seconds", "Last status report per OPA agent", labels=["agent"])
        reports = CounterMetricFamily("groqpolicy_agent_status_reports", "Status reports received per OPA agent", labels=["agent"])
        bundle_ok = GaugeMetricFamily(
            "groqpolicy_agent_bundle_ok", "1 when the agent reports its bundle activated without error, else 0",
            labels=["agent", "bundle", "revision"],
        )
        for a in agents:
            seen.add_metric([a.id], a.last_seen)
            reports.add_metric([a.id], a.reports)
            for b in a.bundles:
                bundle_ok.add_metric([a.id, b.name, b.active_revision], 0 if (b.code or b.errors) else 1)
        yield seen
        yield reports
        yield bundle_ok
        yield GaugeMetricFamily("groqpolicy_agents", "OPA agents that reported status", value=len(agents))
        logs = CounterMetricFamily("groqpolicy_decision_logs", "Decision-log events received from OPA agents")
        logs.add_metric([], self.decision_logs.total)
        yield logs

    def _audit(self) -> Iterator[Metric]:
        writer = self.audit_writer()
        if writer is not None:
            conflicts = CounterMetricFamily("groqpolicy_audit_append_conflicts",
                                            "Appends that lost the race to another replica and relinked (expected-last-sequence)")
            conflicts.add_metric([], writer.conflicts)
            yield conflicts
            yield GaugeMetricFamily("groqpolicy_audit_backlog", "Decisions' audit records in the spool, not in JetStream yet",
                                    value=writer.backlog)
            yield GaugeMetricFamily("groqpolicy_audit_backlog_oldest_seconds",
                                    "How long the oldest of them has waited for JetStream (0 when none waits)",
                                    value=round(writer.backlog_wait_s(), 3))

    def _evaluator(self) -> Iterator[Metric]:
        ev = self.evaluator
        if ev is None:
            return
        yield GaugeMetricFamily("groqpolicy_evaluator_baseline_code",
                                "1 while the in-process evaluator serves its revision on the baseline compiler's code "
                                "(slower), until the revision's serving compile ends, else 0", value=int(ev.on_baseline))
        seconds = CounterMetricFamily("groqpolicy_evaluator_baseline_seconds",
                                      "Seconds the in-process evaluator has served revisions on the baseline compiler's code")
        seconds.add_metric([], ev.baseline_seconds)
        yield seconds
        loads = CounterMetricFamily("groqpolicy_evaluator_baseline_loads",
                                    "Revisions served on the baseline compiler's code first (a policy write's)")
        loads.add_metric([], ev.baseline_loads)
        yield loads
