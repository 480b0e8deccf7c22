"""Policy certification with the real opa: the deterministic checks in Rego (principles, decision
documents, fail closed under a forced model failure, the policy's own tests), the signed
certificate, and the library's and the walkthrough's policies certifying."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest

from controlplane.certification.certificate import PolicyCertificate, verify
from controlplane.certification.certifier import CertificationRefused, Certifier
from controlplane.certification.checks import PolicyChecks, Subject, synthetic_input
from controlplane.infra.recordkeys import FORGED, UNKNOWN_KEY, RecordKeys
from controlplane.policies import rego
from tests.conftest import REPO_ROOT
from tests.test_rego_library import POLICY_TYPES
from tests.test_walkthrough import readme_policy

HEAD = "package team.limits\n\nimport data.groqpolicy.lib.decision as doc\nimport data.groqpolicy.lib.groq\n\n"

LIMIT = "package team.limits\n\nimport data.groqpolicy.lib.decision as doc\n\n" + """deny_reasons contains "amount above 100" if input.amount > 100

decision := doc.document("limits", deny_reasons, set(), {"amount within limit"}, 1, ["P10-proportional-risk"])
"""

# allows whenever the model does not say deny: a failed call (review) becomes an allow
FAIL_OPEN = HEAD + """judgment := groq.judge("fast", "Is this text harmful?", {"text": input.text})

decision := {"decision": "allow", "reasons": ["the model did not object"], "confidence": 1} if {
	judgment.decision != "deny"
}

decision := {"decision": "deny", "reasons": ["deny: the model objected"], "confidence": judgment.confidence} if {
	judgment.decision == "deny"
}
"""

NO_REASONS = "package team.limits\n\n" + """decision := {"decision": "allow", "confidence": 2} if input.amount < 10
"""

TESTS = """package team.limits_test

import data.team.limits

examples := {"small": {"amount": 5}, "large": {"amount": 500}}

test_large_is_denied if limits.decision.decision == "deny" with input as examples.large
test_small_is_allowed if limits.decision.decision == "allow" with input as examples.small
"""

FAILING_TESTS = TESTS + """
test_wrong if limits.decision.decision == "allow" with input as examples.large
"""


@pytest.fixture(scope="module")
def checks(opa_bin) -> PolicyChecks:
    return PolicyChecks(lambda: opa_bin, lambda: [REPO_ROOT / "rego"])


def certifier(checks: PolicyChecks, keys: RecordKeys, audited: list) -> Certifier:
    async def record(outcome, cert):
        audited.append((outcome, cert))

    return Certifier(checks, keys, record=record)


def certify(c: Certifier, text: str, principles: list[str], tests: str = "") -> PolicyCertificate:
    rule_id = uuid.uuid4()
    module = rego.bundle_module(rule_id, text, title="t", policy_type="risk_management", tier="fast")

    async def go() -> PolicyCertificate:
        certified = await c.certify(rule_id=str(rule_id), version=1, name="limits", text=text, module=module,
                                    tests=tests, principles=principles)
        await c.record_issued(certified)
        return certified.certificate

    return asyncio.run(go())


@pytest.mark.parametrize("policy_type", POLICY_TYPES)
def test_every_library_policy_certifies(checks, policy_type):
    report = checks.run(Subject(kind="policies", name=policy_type))
    assert report.passed, [c for c in report.checks if not c.passed]
    by_name = {c.name: c for c in report.checks}
    assert by_name["tests"].detail["ran"] > 0  # its own opa tests ran, and passed
    assert by_name["decisions"].detail["decided"] >= 3  # allow, deny and review examples at least
    assert by_name["principles"].detail["declared"]


def test_the_walkthrough_policy_certifies(checks):
    audited: list = []
    cert = certify(certifier(checks, RecordKeys.generate(), audited), readme_policy(), [])
    assert cert.certified and [o for o, _ in audited] == ["certified"]
    fail_closed = next(c for c in cert.checks if c.name == "fail_closed")
    assert fail_closed.passed and fail_closed.detail["consulted_model"] >= 1  # the synthetic input reached the model


def test_a_certificate_verifies_against_the_record_key_and_nothing_else(checks):
    keys = RecordKeys.generate()
    cert = certify(certifier(checks, keys, []), LIMIT, ["P10-proportional-risk"], tests=TESTS)
    assert cert.certified and cert.signature is not None and cert.signature.kid == keys.kid
    assert verify(cert, keys) == ""
    as_json = msgspec.json.decode(msgspec.json.encode(cert))  # as an API client or a manifest reader has it
    assert verify(as_json, keys) == ""
    assert verify({**as_json, "policy_sha256": "0" * 64}, keys) == FORGED
    assert verify(as_json, RecordKeys.generate()) == UNKNOWN_KEY
    tests = next(c for c in cert.checks if c.name == "tests")
    assert tests.passed and tests.detail == {"declared": True, "ran": 2}


@pytest.mark.parametrize(("text", "principles", "tests", "want"), [
    (LIMIT, ["P10-proportional-risk", "P42-move-fast"], "",
     "principles: principle P42-move-fast is not in the constitution (cdd01ef066bc6cf2; known: P1-human-oversight"),
    (LIMIT.replace('["P10-proportional-risk"]', '["P0-made-up"]'), [], "", "principle P0-made-up is not in the constitution"),
    (FAIL_OPEN, ["P2-fail-closed"], "",
     "fail_closed: probe synthetic input: allows when the model call fails ([\"the model did not object\"])"),
    (NO_REASONS, [], "", "decisions: probe synthetic input (numbers) (model allows): confidence 2"),
    (LIMIT, [], FAILING_TESTS, "tests: opa test: 1 of 3 failed: test_wrong"),
    (LIMIT, [], "package team.limits_test\n\ntest_broken if undefined_thing\n", "tests: opa test: "),
], ids=["unknown-principle", "unknown-principle-in-decisions", "allows-on-failed-model-call", "no-reasons",
        "failing-test", "tests-that-do-not-compile"])
def test_a_policy_that_fails_a_check_is_refused_with_the_reason(checks, text, principles, tests, want):
    audited: list = []
    with pytest.raises(CertificationRefused) as err:
        certify(certifier(checks, RecordKeys.generate(), audited), text, principles, tests)
    assert err.value.status == 422
    assert want in str(err.value), str(err.value)
    # the refusal is recorded, with a signed certificate saying what failed
    assert [o for o, _ in audited] == ["refused"]
    assert audited[0][1].certified is False and audited[0][1].signature is not None


CONFLICTING = """package team.limits

decision := {"decision": "allow", "reasons": ["small"], "confidence": 1}

decision := {"decision": "deny", "reasons": ["deny: flagged"], "confidence": 1} if input.flag
"""


def test_a_policy_that_errors_on_a_probe_is_refused_as_a_failed_check(checks):
    audited: list = []
    with pytest.raises(CertificationRefused) as err:
        certify(certifier(checks, RecordKeys.generate(), audited), CONFLICTING, [])
    assert str(err.value).startswith("policy 'limits' is not certified, so it is not activated: decisions: evaluating "
                                     "the policy on a probe input failed: opa_policy:5: rule data.groqpolicy.rules.p_")
    assert "produced conflicting values" in str(err.value)
    assert [o for o, _ in audited] == ["refused"]


def test_no_reasons_names_both_defects(checks):
    with pytest.raises(CertificationRefused) as err:
        certify(certifier(checks, RecordKeys.generate(), []), NO_REASONS, [])
    assert "no reasons (want a non-empty array of strings)" in str(err.value)
    assert "confidence 2 is not a number in [0, 1]" in str(err.value)


def test_synthetic_input_names_every_path_the_policy_reads():
    text = "x if input.a.b == 1\ny if input.a.c\nz if input.text\nw if input.a"
    assert synthetic_input(text) == {"a": {"b": "certification probe", "c": "certification probe"},
                                     "text": "certification probe"}


def test_the_review_asks_for_findings_under_a_strict_schema_and_a_reply_without_them_is_no_answer():
    import msgspec

    from bridge.inference.catalog import default_catalog
    from bridge.inference.completion import BadAnswer, completion_params, read_verdict
    from bridge.inference.wire import REVIEW_JSON_SCHEMA, decode_request
    from controlplane.certification.review import request_body

    req = decode_request(request_body(name="limits", text="package limits", principles=[{"id": "P10-proportional-risk"}]))
    assert (req.answer, req.strict_schema) == ("review", True)
    params = completion_params(default_catalog(), "openai/gpt-oss-120b", "premium", req)
    assert params["response_format"]["json_schema"] == {"name": "policy_review", "strict": True, "schema": REVIEW_JSON_SCHEMA}
    answer = {"decision": "deny", "confidence": 0.9, "rationale": "exports everything"}
    with pytest.raises(BadAnswer, match="findings"):
        read_verdict(msgspec.json.encode(answer).decode(), "review")
    with pytest.raises(BadAnswer, match="severity"):
        read_verdict(msgspec.json.encode({**answer, "findings": [{"principle": "P10", "severity": "dire", "text": "x"}]}).decode(), "review")
    found = read_verdict(msgspec.json.encode({**answer, "findings": [{"principle": "P10-proportional-risk",
                                                                       "severity": "high", "text": "exports all"}]}).decode(), "review")
    assert str(found.findings[0]) == "P10-proportional-risk (high): exports all"
    assert read_verdict(msgspec.json.encode(answer).decode()).findings is msgspec.UNSET  # a judgment needs none
