"""Pure pieces of the policies and evaluation packages: package rewriting, settings, decision
normalisation, synthesis, the model stage's judgment and policy selection (no processes)."""

from __future__ import annotations

import uuid

import pytest

from bridge.inference.wire import InferReply
from bridge.kernel.config import Settings
from bridge.kernel.vocabulary import MIN_MODEL_CONFIDENCE, strictest
from bridge.opawasm import UNDEFINED
from controlplane.bundles.findings import CompileError
from controlplane.evaluation.decision import applicable, normalise, outcome, pre_outcome, propose, refused
from controlplane.evaluation.model_stage import judged
from controlplane.policies import rego
from controlplane.policies.schemas import PolicyRecord

RID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_the_package_line_is_replaced_in_place_and_an_entrypoint_appended():
    text = "# METADATA\n# title: mine\npackage my.pkg\n\nimport rego.v1\n\ndecision := \"allow\"\n"
    out = rego.bundle_module(RID, text, title="t", policy_type="risk_management", tier="nano")
    lines = out.splitlines()
    assert lines[2] == "package groqpolicy.rules.p_12345678123456781234567812345678"
    assert lines[:2] == text.splitlines()[:2] and lines[3:7] == text.splitlines()[3:7]  # rows unchanged
    assert "groqpolicy_decision := decision" in lines and lines.count("# entrypoint: true") == 2
    assert lines[-2:] == ["groqpolicy_decisions := [groqpolicy_found | some groqpolicy_one in input",
                          "\tgroqpolicy_found := [groqpolicy_d | groqpolicy_d := decision] with input as groqpolicy_one]"]
    assert rego.wasm_batch_entrypoint(RID) == "groqpolicy/rules/p_12345678123456781234567812345678/groqpolicy_decisions"
    assert rego.decision_path(RID) == "groqpolicy/rules/p_12345678123456781234567812345678/decision"
    assert rego.wasm_entrypoint(RID) == "groqpolicy/rules/p_12345678123456781234567812345678/groqpolicy_decision"


@pytest.mark.parametrize("text,message", [
    ("decision := 1\n", "opa_policy:1:1: rego_parse_error: package expected (a Rego module starts with `package <name>`)"),
    ("x := 1\npackage late\ndecision := 1\n", "opa_policy:1:1: rego_parse_error: package expected (a Rego module starts with `package <name>`)"),
    ("package p\nallow := true\n", "opa_policy:1:1: rego_type_error: the policy must define a `decision` rule (the decision document)"),
])
def test_modules_without_a_package_or_a_decision_are_refused(text, message):
    with pytest.raises(CompileError) as info:
        rego.bundle_module(RID, text, title="t", policy_type="risk_management", tier="nano")
    assert str(info.value) == f"opa check failed: {message}"


def test_may_block_spots_model_and_network_calls():
    assert rego.may_block('x := http.send({"url": "u", "method": "GET"})')
    assert rego.may_block("import data.groqpolicy.lib.groq\n")
    assert rego.may_block("d := data.groqpolicy.policies.data_governance.decision")
    assert not rego.may_block("import data.groqpolicy.lib.decision as doc\ndecision := doc.document(...)")


def test_nats_url_settings():
    assert Settings.from_env({}).nats_url == ""
    assert Settings.from_env({"NATS_URL": "nats://a:1"}).nats_url == "nats://a:1"
    assert Settings.from_env({"NATS_URL": "nats://a:1", "GROQPOLICY_NATS_URL": "nats://b:2"}).nats_url == "nats://b:2"
    env = Settings.from_env({"GROQPOLICY_OPA_URL": "http://opa:8181", "GROQPOLICY_NATS_REPLICAS": "3"})
    assert (env.opa_url, env.nats_replicas) == ("http://opa:8181", 3)
    assert Settings.from_env({}).opa_url == "http://127.0.0.1:8181"


@pytest.mark.parametrize("value,expected", [
    ({"decision": "allow", "confidence": 0.9, "reasons": ["ok", 3]}, ("allow", 0.9, ["ok"])),
    ({"decision": "allow", "reasons": []}, ("allow", 0.0, [])),  # no confidence: not confident
    ({"decision": "allow", "confidence": 1.5}, ("allow", 0.0, [])),
    ({"decision": "review", "confidence": True}, ("review", 0.0, [])),
    ("deny", ("deny", 1.0, ["deny: policy 'p' decided deny"])),
    (True, ("allow", 1.0, ["policy 'p' allowed"])),
    (False, ("deny", 1.0, ["deny: policy 'p' denied"])),
    (UNDEFINED, ("deny", 0.0, ["deny: policy 'p': decision is undefined"])),
    ({"decision": "maybe"}, ("deny", 0.0, ['deny: policy \'p\' returned no decision document (got {"decision":"maybe"})'])),
    ({"decision": ["allow"]}, ("deny", 0.0, ['deny: policy \'p\' returned no decision document (got {"decision":["allow"]})'])),
    (None, ("deny", 0.0, ["deny: policy 'p' returned no decision document (got null)"])),
])
def test_normalise_fails_closed(value, expected):
    assert normalise(value, "p") == expected


def test_strictest_orders_deny_review_allow_and_unknown_is_deny():
    assert strictest("allow", "review") == "review" and strictest("deny", "review") == "deny"
    assert strictest("allow", "allow") == "allow" and strictest("allow", "bogus") == "bogus"  # unknown ranks as deny


_clock = iter(range(1000))


def _rec(ptype: str, tier: str, active: bool = True, priority: int = 0) -> PolicyRecord:
    return PolicyRecord(rule_id=uuid.uuid4(), name=ptype, policy_type=ptype, opa_policy="", performance_tier=tier,  # type: ignore[arg-type]
                        is_active=active, priority=priority, created_at=f"2026-11-27T00:00:{next(_clock):02d}Z")


def test_applicable_filters_type_tier_activity_and_orders_by_priority():
    a, b, c, d = _rec("risk_management", "nano"), _rec("risk_management", "premium"), _rec("security_policies", "fast", priority=5), \
        _rec("risk_management", "nano", active=False)
    records = [a, b, c, d]
    assert applicable(records, ["risk_management"], "nano") == [a]
    assert applicable(records, ["risk_management"], "reasoning") == [a, b]
    assert applicable(records, [], "fast") == [c, a]
    assert applicable(records, ["data_governance"], "reasoning") == []


def _outcome(name: str, decision: str, confidence: float, reasons: list[str]):
    rec = PolicyRecord(rule_id=uuid.uuid4(), name=name, policy_type="risk_management", opa_policy="", performance_tier="nano")
    return outcome(rec, {"decision": decision}, "", 2.0, decision, confidence, reasons)


def test_synthesis_takes_the_strictest_decision_and_its_least_confident_policy():
    outs = [_outcome("a", "allow", 0.9, ["a ok"]), _outcome("b", "review", 0.8, ["review: b unsure"]),
            _outcome("c", "review", 0.6, ["review: c unsure"]), _outcome("d", "allow", 0.1, ["d ok"])]
    p = propose(outs, 1.0, [], "nano")
    assert (p.decision, p.confidence) == ("review", 0.6)
    assert p.reasons == ["review: b unsure", "review: c unsure"]  # an allow's own reasons do not explain a review
    assert p.wasm_us == 9.0 and [r.name for r in p.results] == ["a", "b", "c", "d"]
    deny = propose([*outs, _outcome("e", "deny", 1.0, ["deny: e"])], 0.0, [], "nano")
    assert (deny.decision, deny.confidence, deny.reasons) == ("deny", 1.0, ["deny: e", "review: b unsure", "review: c unsure"])
    allow = propose([outs[0], outs[3]], 0.0, [], "nano")
    assert (allow.decision, allow.confidence, allow.reasons) == ("allow", 0.1, ["a ok", "d ok"])


def test_no_applicable_policy_and_a_failed_pre_validation_are_deny():
    none = propose([], 3.0, ["risk_management"], "fast")
    assert (none.decision, none.confidence, none.results) == ("deny", 1.0, [])
    assert none.reasons == ["deny: no active policy applies (risk_management, tier fast or faster)"]
    pre = pre_outcome({"decision": "deny", "reasons": ["deny: principal is missing"]})
    assert refused(pre, 3.0).reasons == ["deny: Constitutional pre-validation failed", "deny: principal is missing"]
    # a pre-validation document that names no known decision is a deny, never passed through
    assert pre_outcome({"decision": "maybe"}).decision == "deny" and pre_outcome(None).decision == "deny"


def _reply(decision: str, confidence: float, degraded: bool = False) -> InferReply:
    return InferReply(decision=decision, confidence=confidence, rationale="because", model="m", tier="fast",
                      degraded=degraded)


def test_the_model_stage_holds_answers_to_the_one_confidence_threshold():
    pct = round(MIN_MODEL_CONFIDENCE * 100)
    assert judged(_reply("allow", MIN_MODEL_CONFIDENCE), "review", ["review: needs a look", "rule"])[:2] == ("allow", MIN_MODEL_CONFIDENCE)
    unsure = judged(_reply("allow", MIN_MODEL_CONFIDENCE - 0.01), "review", ["review: needs a look"])
    assert unsure[0] == "review" and unsure[2][-1].endswith(f"which is below the required {pct}%")
    assert judged(_reply("allow", 0.99, degraded=True), "review", [])[:2] == ("review", 0.0)
    # a confident answer settles a review and can veto an allow, never undo a deny
    settled = judged(_reply("allow", 0.9), "review", ["review: needs a look", "rule"])
    assert settled[2] == ["rule", "model (fast, m) judged allow with confidence 90%: because"]
    assert judged(_reply("deny", 0.9), "allow", [])[0] == "deny"
    assert judged(_reply("allow", 0.9), "deny", [])[0] == "deny"
