# METADATA
# title: groqpolicy constitution
# description: |
#   Helpers over the constitution's data (data.groqpolicy.constitution: hash, version,
#   principles) and two entrypoints that check its invariants: pre_validation on a
#   request before any policy runs, post_validation on a decision a policy proposes.
package groqpolicy.constitution

import data.groqpolicy.lib.decision as doc

# The constitution's own data lives at this package's path, so the rule names here
# must not reuse its keys (hash, version, principles).
constitutional_hash := data.groqpolicy.constitution.hash

principle_ids := {p.id | some p in data.groqpolicy.constitution.principles}

# principle(id) is the principle with that id; undefined for an unknown id.
principle(id) := p if {
	some p in data.groqpolicy.constitution.principles
	p.id == id
}

# The lowest confidence at which an allow stands without a human looking at it.
default min_allow_confidence := 0.7

min_allow_confidence := data.groqpolicy.config.min_allow_confidence

# ---------------------------------------------------------------------------------
# pre_validation: input = the accountability fields of the request about to be evaluated;
# the pipeline passes these and nothing else, and memoises the answer on them:
#   {constitutional_hash, principal: {id, ...} | "id", oversight: {disabled?, human_review?},
#    audit?: {disabled?}, options?: {skip_human_review?}}
# (tests/test_rego_library.py checks that no pre-validation rule reads another field.)

pre_violations contains v if {
	not input.constitutional_hash
	v := violation("P9-accountability-audit", "deny", "constitutional_hash is missing")
}

pre_violations contains v if {
	input.constitutional_hash
	input.constitutional_hash != constitutional_hash
	v := violation("P9-accountability-audit", "deny", concat("", [
		"constitutional_hash mismatch (want: ", constitutional_hash,
		", got: ", json.marshal(input.constitutional_hash), ")",
	]))
}

pre_violations contains v if {
	not _principal_id
	v := violation("P9-accountability-audit", "deny", "principal is missing (an accountable principal must be named)")
}

pre_violations contains v if {
	some msg in _oversight_overrides
	v := violation("P1-human-oversight", "deny", msg)
}

pre_violations contains v if {
	input.audit.disabled == true
	v := violation("P9-accountability-audit", "deny", "request asks to disable audit logging")
}

_oversight_overrides contains "request asks to disable human oversight" if input.oversight.disabled == true

_oversight_overrides contains "request asks to skip human review" if input.oversight.human_review == false

_oversight_overrides contains "request asks to skip human review" if input.options.skip_human_review == true

# Whether a principal is named is all pre-validation asks of it: the pipeline keeps pre-validation's
# answers per named-or-not, not per principal (controlplane/evaluation/constitution.py, `named`), so
# no rule may read the principal otherwise (tests/test_rego_library.py checks).
_principal_id := input.principal if {
	is_string(input.principal)
	input.principal != ""
} else := input.principal.id if {
	is_string(input.principal.id)
	input.principal.id != ""
}

# METADATA
# title: Constitutional pre-validation
# description: Checks a request before evaluation (hash, accountable principal, no override of oversight or audit).
# entrypoint: true
# custom:
#   policy_type: constitutional_compliance
#   performance_tier: nano
pre_validation := validation(
	"constitution.pre_validation",
	pre_violations,
	["P1-human-oversight", "P9-accountability-audit"],
)

# ---------------------------------------------------------------------------------
# post_validation: input = a proposed decision and the context it will be acted on in.
#   {constitutional_hash?, decision: <decision document>, oversight: {escalation: "<queue>"}}

post_violations contains v if {
	not _decision_valid
	v := violation("P2-fail-closed", "deny", concat("", [
		"decision: want one of allow, deny, review, got ",
		json.marshal(object.get(_proposed, "decision", null)),
	]))
}

post_violations contains v if {
	_proposed.constitutional_hash != constitutional_hash
	v := violation("P9-accountability-audit", "deny", concat("", [
		"decision carries constitutional_hash ", json.marshal(_proposed.constitutional_hash),
		", want ", constitutional_hash,
	]))
}

post_violations contains v if {
	_proposed.decision == "allow"
	some reason in _proposed_reasons
	startswith(reason, "deny:")
	v := violation("P2-fail-closed", "deny", concat("", ["allow contradicts its own deny reason: ", reason]))
}

post_violations contains v if {
	_proposed.decision == "allow"
	not _confidence_ok
	v := violation("P1-human-oversight", "review", concat("", [
		"allow with confidence ", json.marshal(object.get(_proposed, "confidence", null)),
		" below ", json.marshal(min_allow_confidence), " needs a human reviewer",
	]))
}

post_violations contains v if {
	_proposed.decision == "allow"
	_model_based
	not _escalation_path
	v := violation("P1-human-oversight", "review", "allow rests on a model judgment but no human escalation path is configured (oversight.escalation)")
}

post_violations contains v if {
	count(_proposed_reasons) == 0
	v := violation("P5-transparency", "review", "decision gives no reasons")
}

_proposed := input.decision if is_object(input.decision)

else := {"decision": input.decision} if is_string(input.decision)

else := {}

# Negation goes through a helper rule: `not set[_proposed.decision]` would be false,
# not true, when the decision is missing (the reference is evaluated before `not`).
_decision_valid if doc.outcome_values[_proposed.decision]

_proposed_reasons := [r | some r in object.get(_proposed, "reasons", []); is_string(r)]

_confidence_ok if {
	is_number(_proposed.confidence)
	_proposed.confidence >= min_allow_confidence
}

# A decision is model-based when it says so, or when one of its reasons quotes a model.
_model_based if _proposed.model_based == true

_model_based if {
	some reason in _proposed_reasons
	contains(reason, "model (")
}

_escalation_path if {
	is_string(input.oversight.escalation)
	input.oversight.escalation != ""
}

# METADATA
# title: Constitutional post-validation
# description: Checks a proposed decision before it is acted on and may only make it stricter.
# entrypoint: true
# custom:
#   policy_type: constitutional_compliance
#   performance_tier: nano
post_validation := object.union(_post_checked, {
	# The proposed decision can only be made stricter, never relaxed.
	"decision": doc.strictest(object.get(_proposed, "decision", "deny"), _post_checked.decision),
	"reasons": array.concat(_violation_reasons(_post_checked), _proposed_reasons),
	"confidence": _post_confidence,
})

# METADATA
# title: Constitutional pre-validation of many requests
# description: pre_validation of each request in input (an array), in order; one evaluation for a batch.
# entrypoint: true
# custom:
#   policy_type: constitutional_compliance
#   performance_tier: nano
pre_validations := [v | some request in input; v := pre_validation with input as request]

# METADATA
# title: Constitutional post-validation of many proposals
# description: post_validation of each proposal in input (an array), in order; one evaluation for a batch.
# entrypoint: true
# custom:
#   policy_type: constitutional_compliance
#   performance_tier: nano
post_validations := [v | some proposal in input; v := post_validation with input as proposal]

_post_checked := validation(
	"constitution.post_validation",
	post_violations,
	["P1-human-oversight", "P2-fail-closed", "P5-transparency", "P9-accountability-audit"],
)

_violation_reasons(checked) := checked.reasons if count(checked.violations) > 0

else := []

# The constitution is sure about its own violations; otherwise the proposal's confidence stands.
_post_confidence := 1 if count(post_violations) > 0

else := _proposed.confidence if _confidence_valid

else := 0

_confidence_valid if {
	is_number(_proposed.confidence)
	_proposed.confidence >= 0
	_proposed.confidence <= 1
}

# ---------------------------------------------------------------------------------

violation(id, severity, message) := {"principle": id, "severity": severity, "message": message}

validation(name, violations, principles) := object.union(
	doc.document(
		name,
		{v.message | some v in violations; v.severity == "deny"},
		{v.message | some v in violations; v.severity == "review"},
		{"no constitutional violations"},
		1,
		principles,
	),
	{"violations": _sorted(violations)},
)

_sorted(violations) := [v |
	some key in sort({concat("|", [v.principle, v.message]) | some v in violations})
	some v in violations
	concat("|", [v.principle, v.message]) == key
]
