"""Whether the control plane is degraded: the one judgment `GET /health` and the dashboard show."""

from __future__ import annotations

from controlplane.infra.supervision import SupervisorStatus

AUDIT_WAIT_DEGRADED_S = 10.0  # a spooled audit record that has waited this long for JetStream: degraded


def degraded(errors: list[str], nats_connected: bool, audit_wait_s: float, supervisor: SupervisorStatus | None) -> bool:
    """Something did not load or publish (`errors`), NATS is disconnected, a decision's audit record
    has waited AUDIT_WAIT_DEGRADED_S in the spool (connected or not, NATS is not doing its part: a
    stuck server, a cluster without quorum), or `groqpolicy up` has a process restarting or given up on."""
    return (bool(errors) or not nats_connected or audit_wait_s >= AUDIT_WAIT_DEGRADED_S
            or bool(supervisor and supervisor.degraded))
