"""What a real OPA agent posts, as typed structs, checked as opa v1.22.3 writes it.

The shapes follow OPA's own Go types: a decision-log event is `logs.EventV1`
(v1/plugins/logs/plugin.go), a status report `status.UpdateRequestV1` (v1/plugins/status/plugin.go)
with `bundle.Status` per bundle (v1/plugins/bundle/status.go), `lstat.Status` for decision logs and
`plugins.Status` per plugin. Go's `time.Time` fields travel as RFC 3339 strings and stay strings
here; Go `error` values (an event's `error`, a bundle's `errors`) are whatever JSON their concrete
type writes, so any JSON is accepted there. Fields a newer OPA adds are ignored, never refused.

Validation names the field that is wrong, msgspec-style: ``Expected `object`, got `array` - at `$.labels` ``.
"""

from __future__ import annotations

from typing import Any

import msgspec


class BundleInfo(msgspec.Struct, omit_defaults=True):
    revision: str = ""


class HttpRequestContext(msgspec.Struct, omit_defaults=True):
    headers: dict[str, list[str]] = msgspec.field(default_factory=dict)


class RequestContext(msgspec.Struct, omit_defaults=True):
    http: HttpRequestContext | None = None


class DecisionEvent(msgspec.Struct, omit_defaults=True):
    """One decision-log event (`logs.EventV1`). `decision_id` is the one field OPA always fills
    that identifies the event; the rest may be absent (masked, erased or not configured)."""

    decision_id: str
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    batch_decision_id: str = ""
    trace_id: str = ""
    span_id: str = ""
    revision: str = ""  # deprecated by OPA in favour of `bundles`, still accepted
    bundles: dict[str, BundleInfo] = msgspec.field(default_factory=dict)
    path: str = ""
    query: str = ""
    input: Any = None
    result: Any = None
    intermediate_results: dict[str, Any] = msgspec.field(default_factory=dict)
    mapped_result: Any = None
    nd_builtin_cache: Any = None
    erased: list[str] = msgspec.field(default_factory=list)
    masked: list[str] = msgspec.field(default_factory=list)
    error: Any = None
    requested_by: str = ""
    timestamp: str = ""
    metrics: dict[str, Any] = msgspec.field(default_factory=dict)
    req_id: int = 0
    rule_labels: list[dict[str, Any]] = msgspec.field(default_factory=list)
    request_context: RequestContext | None = None
    custom: dict[str, Any] = msgspec.field(default_factory=dict)


class BundleStatus(msgspec.Struct, omit_defaults=True):
    """One bundle's status (`bundle.Status`)."""

    name: str = ""
    active_revision: str = ""
    last_successful_activation: str = ""
    type: str = ""
    size: int = 0
    last_successful_download: str = ""
    last_successful_request: str = ""
    last_request: str = ""
    code: str = ""
    message: str = ""
    errors: list[Any] = msgspec.field(default_factory=list)
    metrics: dict[str, Any] = msgspec.field(default_factory=dict)
    http_code: int | str | None = None  # a Go json.Number


class DecisionLogStatus(msgspec.Struct, omit_defaults=True):
    """The decision-log plugin's status (`lstat.Status`)."""

    code: str = ""
    message: str = ""
    http_code: int | str | None = None
    metrics: dict[str, Any] = msgspec.field(default_factory=dict)


class PluginStatus(msgspec.Struct, omit_defaults=True):
    """One plugin's state (`plugins.Status`): OK, NOT_READY, ERROR or WARN."""

    state: str = ""
    message: str = ""


class StatusReport(msgspec.Struct, omit_defaults=True):
    """One status report (`status.UpdateRequestV1`)."""

    labels: dict[str, str] = msgspec.field(default_factory=dict)
    bundle: BundleStatus | None = None  # deprecated by OPA in favour of `bundles`
    bundles: dict[str, BundleStatus] = msgspec.field(default_factory=dict)
    discovery: BundleStatus | None = None
    decision_logs: DecisionLogStatus | None = None
    metrics: dict[str, Any] = msgspec.field(default_factory=dict)
    plugins: dict[str, PluginStatus] = msgspec.field(default_factory=dict)

    @property
    def agent(self) -> str:
        return agent_name(self.labels)


def agent_name(labels: dict) -> str:
    """The agent's configured name (`labels.agent`), else OPA's instance id (`labels.id`)."""
    name = labels.get("agent") or labels.get("id") if isinstance(labels, dict) else None
    return str(name or "unknown")
