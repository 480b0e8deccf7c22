"""A candidate: the policies as they would be after a change, compiled and signed but never served.

Three kinds of change (`CandidateSpec`), checked before anything is compiled:

- `rule_id` + `opa_policy`: a live policy with changed Rego;
- `candidate_id` (optionally with `rule_id`): a stored policy that is not active yet, made active
  (in place of `rule_id`'s policy, when given);
- `bundle_dir`: a changed copy of the policy library (`rego/`: the constitution, the helpers, the
  example policies), with the stored policies inside as usual.

The candidate is compiled by the same bundler as a policy write (so a candidate that would not be
accepted as a write is refused here too, 422), signed with the control plane's key and loaded into
an evaluator of its own, whose model transport the caller chooses (recorded judgments for a
replay, the live workers for a shadow).
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import msgspec

from bridge.kernel.errors import BadRequest, Conflict, NotFound
from bridge.opawasm import HostConfig, InferTransport, SendMemo, WasmEvaluator
from controlplane.evaluation.scheduling import WASM_POOL_SIZE
from controlplane.policies import rego
from controlplane.policies.bundler import PolicyBundler
from controlplane.policies.schemas import PolicyRecord, RegoText
from controlplane.policies.service import PolicyService


class CandidateSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    rule_id: uuid.UUID | None = None  # the live policy the candidate changes or replaces
    # its changed Rego, capped as a policy write is: a longer one is a 400 here, not a shadow
    # definition over NATS's max_payload (a 500 at `shadow start`) nor a write refused at promotion
    opa_policy: RegoText | None = None
    candidate_id: uuid.UUID | None = None  # a stored policy that is not active yet
    bundle_dir: str | None = None  # a changed copy of the policy library (`rego/`), on the control plane's disk


class Candidate(msgspec.Struct, kw_only=True):
    spec: CandidateSpec
    description: str
    records: list[PolicyRecord]  # the active policies with the candidate in place
    revision: str
    archive: bytes  # the signed wasm bundle
    changed: list[uuid.UUID]  # the policies the candidate changes (empty: the library changed)

    def evaluator(self, policies: PolicyService, bridge_url: str, transport: InferTransport,
                  pool_size: int = WASM_POOL_SIZE, send_memo: SendMemo | None = None) -> WasmEvaluator:
        """An evaluator of its own holding the candidate (verified as every bundle is); `send_memo`:
        for a transport that answers a request the same every time (a replay's `Oracle`)."""
        vkey = policies.bundler.publisher.key.verification_key()
        evaluator = WasmEvaluator({vkey.kid: vkey}, keyid=vkey.kid, pool_size=pool_size,
                                  host=HostConfig(bridge_url=bridge_url, infer_transport=transport,
                                                  send_memo=send_memo))
        evaluator.load(self.archive)
        return evaluator


def _records(spec: CandidateSpec, policies: PolicyService) -> tuple[list[PolicyRecord], list[uuid.UUID], str]:
    stored = {r.rule_id: r for r in policies.store.records()}
    active = {rid: r for rid, r in stored.items() if r.is_active}
    if spec.rule_id is not None and spec.rule_id not in stored:
        raise NotFound(f"candidate: policy {spec.rule_id}: not found")
    if spec.candidate_id is not None:
        found = stored.get(spec.candidate_id)
        if found is None:
            raise NotFound(f"candidate: policy {spec.candidate_id}: not found")
        if found.is_active:
            raise Conflict(f"candidate: policy {spec.candidate_id} is active already (a candidate is a stored policy "
                           "that is not active yet)")
        if spec.rule_id is not None:
            active.pop(spec.rule_id, None)
        active[found.rule_id] = msgspec.structs.replace(found, is_active=True)
        what = f"stored policy {found.name!r} activated" + (f" in place of {spec.rule_id}" if spec.rule_id else "")
        return list(active.values()), [found.rule_id, *([spec.rule_id] if spec.rule_id else [])], what
    if spec.opa_policy is not None:
        if spec.rule_id is None:
            raise BadRequest("candidate: opa_policy needs the rule_id of the policy it changes")
        live = stored[spec.rule_id]
        changed = msgspec.structs.replace(live, opa_policy=spec.opa_policy, version=live.version + 1)
        if live.is_active:
            active[live.rule_id] = changed
        return list(active.values()), [live.rule_id], f"policy {live.name!r} with changed Rego"
    if spec.bundle_dir is not None:
        return list(active.values()), [], f"policy library from {spec.bundle_dir}"
    raise BadRequest("candidate: give rule_id and opa_policy (changed Rego), candidate_id (a stored policy not "
                     "active yet, optionally with the rule_id it replaces) or bundle_dir (a changed rego/ directory)")


def build_candidate(spec: CandidateSpec, policies: PolicyService) -> Candidate:
    """Compile and sign the candidate (blocking: run in a thread). CompileError (422) when it does not compile."""
    records, changed, description = _records(spec, policies)
    # a changed text is never put in the service's module cache (keyed by version: the candidate's
    # made-up version may later be a real one with other text)
    modules = {str(r.rule_id): rego.bundle_module(r.rule_id, r.opa_policy, title=r.name, policy_type=r.policy_type,
                                                  tier=r.performance_tier) if r.rule_id in changed else policies.module_of(r)
               for r in records}
    bundler = policies.bundler
    if spec.bundle_dir is None:
        compiled = bundler.compile(modules)
        return Candidate(spec=spec, description=description, records=records, revision=compiled.revision,
                         archive=bundler.publisher.sign(compiled)["wasm"], changed=changed)
    source = Path(spec.bundle_dir)
    if not source.is_dir():
        raise BadRequest(f"candidate: bundle_dir {spec.bundle_dir}: not a directory on the control plane's host")
    with tempfile.TemporaryDirectory(prefix="groqpolicy-candidate-") as tmp:
        (Path(tmp) / "rego").symlink_to(source.resolve(), target_is_directory=True)
        other = PolicyBundler(bundler.compiler, bundler.publisher, Path(tmp), bundler.bundles_dir, bundler.bundle)
        compiled = other.compile(modules)
        return Candidate(spec=spec, description=description, records=records, revision=compiled.revision,
                         archive=bundler.publisher.sign(compiled)["wasm"], changed=changed)
