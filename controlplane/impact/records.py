"""What the replay store holds, as msgspec structs, and the pure functions over them.

Two kinds of message share one stream (`controlplane.impact.store`):

- `replay.decision.<source>`: a list of `Recorded` decisions (one per evaluation; a batch request
  is one message). Each holds the input, the request's parameters, the revision that decided, its
  decision and each policy type's part, and the WASM time it took.
- `replay.divergence`: a list of `Divergence`s, what shadow mode found (controlplane.impact.shadow).
- `replay.judgment`: a list of `Judgment`s, the model's answers keyed by their exact request
  (`judgment_key`). Kept apart from the decisions because a judgment is asked once and then served
  from caches to many decisions, some of them hours later: a replay reads every retained judgment
  and only the decisions of its window.

The key of a judgment covers what decides its answer (tier, model, question, the context, the
asking policy, the sampling parameters) and leaves out what does not (the deadline, the hash), so
the same question asked by a candidate finds the recorded answer, and a changed one does not.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from bridge.kernel.vocabulary import DECISION_RANK

DECISION_SUBJECT = "replay.decision"
JUDGMENT_SUBJECT = "replay.judgment"
DIVERGENCE_SUBJECT = "replay.divergence"
KEY_FIELDS = ("question", "context", "policy", "model", "max_tokens", "temperature")
REDACTED = "[redacted]"
_canonical = msgspec.json.Encoder(order="sorted")


class Recorded(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """One decision as it was made."""

    id: str  # the evaluation id (OPA's decision id for agents)
    ts: float  # unix seconds
    source: str  # api | batch | nats | opa-agent
    input: Any
    decision: str
    revision: str = ""
    tier: str = ""
    policy_types: list[str] = []  # as requested (empty: any type)
    constitutional_hash: str = ""
    by_type: dict[str, str] = {}  # each policy type's decision (the strictest of its policies)
    wasm_us: float = 0.0
    path: str = ""  # agents: the queried path


class Outcome(msgspec.Struct, gc=False):
    """A recorded decision as a replay's candidate decided it again."""

    decision: str
    by_type: dict[str, str]  # as `Recorded.by_type`
    wasm_us: float


class Chunk(msgspec.Struct, array_like=True):
    """Recorded decisions of one kind, for a replay helper: the pipeline's (types, tier, hash), or an
    agent's queries of `path`."""

    policy_types: list[str]
    tier: str
    constitutional_hash: str
    inputs: list[Any]
    path: str = ""  # an agent's decisions: the queried path


class Judgment(msgspec.Struct, kw_only=True, gc=False):
    """A model's answer to one exact request."""

    key: str
    tier: str
    reply: dict[str, Any]


class Divergence(msgspec.Struct, kw_only=True):
    """A live decision a shadow candidate decided otherwise: both decisions, both revisions and the
    input's digest (never the input)."""

    rule_id: str  # the live policy the candidate shadows
    evaluation_id: str
    input_sha256: str
    live: str
    shadow: str
    live_revision: str
    shadow_revision: str
    at: float


def judgment_key(tier: str, request: Any) -> str:
    """The digest of what decides a judgment: `request` is an InferRequest as a dict (http.send's
    body) or as JSON bytes (the pipeline's own model stage)."""
    if isinstance(request, (bytes, bytearray, memoryview)):
        request = msgspec.json.decode(request)
    fields = {k: request.get(k) for k in KEY_FIELDS} if isinstance(request, dict) else {"raw": request}
    return hashlib.sha256(_canonical.encode([tier, fields])).hexdigest()


def strictest_by_type(results: list[tuple[str, str]]) -> dict[str, str]:
    """{policy type: the strictest decision among its policies} from (type, decision) pairs."""
    out: dict[str, str] = {}
    for kind, decision in results:
        held = out.get(kind)
        if held is None or DECISION_RANK.get(decision, 3) > DECISION_RANK.get(held, 3):
            out[kind] = decision
    return out


def redact(value: Any, fields: frozenset[str] | set[str]) -> Any:
    """`value` with every object member named in `fields` replaced, at any depth."""
    if isinstance(value, dict):
        return {k: REDACTED if k in fields else redact(v, fields) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, fields) for v in value]
    return value


def agent_judgments(cache: Any, bridge_url: str) -> list[Judgment]:
    """The judgments in an OPA decision-log event's `nd_builtin_cache`: each `http.send` to the
    bridge's `/v1/infer/<tier>` with its answer. OPA keys the cache by the builtin's arguments as
    JSON (`[{request}]`); other builtins and other URLs are left out."""
    sends = cache.get("http.send") if isinstance(cache, dict) else None
    if not isinstance(sends, dict):
        return []
    prefix = bridge_url.rstrip("/") + "/v1/infer/"
    found = []
    for args, response in sends.items():
        try:
            (request,) = msgspec.json.decode(args) if isinstance(args, str) else args
        except (msgspec.DecodeError, TypeError, ValueError):
            continue
        url = request.get("url", "") if isinstance(request, dict) else ""
        body = response.get("body") if isinstance(response, dict) else None
        if not url.startswith(prefix) or not isinstance(body, dict) or response.get("status_code") != 200:
            continue
        tier = url[len(prefix):].split("?")[0].strip("/")
        found.append(Judgment(key=judgment_key(tier, request.get("body")), tier=tier, reply=body))
    return found
