# METADATA
# title: Constitutional compliance
# description: |
#   Checks a request against the constitution: the constitutional hash, an accountable
#   principal, no switching off of oversight or audit, human oversight for automated
#   decisions about people, and (when the request carries a proposed decision) the
#   constitution's post-validation of that decision. Pure rules; no model call.
package groqpolicy.policies.constitutional_compliance

import data.groqpolicy.constitution
import data.groqpolicy.lib.decision as doc

principles := [
	"P1-human-oversight",
	"P2-fail-closed",
	"P5-transparency",
	"P9-accountability-audit",
]

# Actions whose outcome is a decision about a person (GDPR Art. 22 style): a human
# must be able to step in.
automated_person_decisions := {"credit_decision", "hiring_decision", "benefit_eligibility", "account_termination"}

deny_reasons contains v.message if {
	some v in constitution.pre_violations
	v.severity == "deny"
}

deny_reasons contains v.message if {
	input.decision
	some v in constitution.post_violations
	v.severity == "deny"
}

review_reasons contains v.message if {
	input.decision
	some v in constitution.post_violations
	v.severity == "review"
}

# A proposed deny or review stands: this policy can only make a decision stricter.
deny_reasons contains "proposed decision is deny" if input.decision.decision == "deny"

review_reasons contains "proposed decision is review" if input.decision.decision == "review"

review_reasons contains msg if {
	automated_person_decisions[input.action]
	not _escalation_path
	msg := concat("", ["automated ", input.action, " about a person needs a human escalation path (oversight.escalation)"])
}

allow_reasons contains "request satisfies the constitution's invariants"

_escalation_path if {
	is_string(input.oversight.escalation)
	input.oversight.escalation != ""
}

# METADATA
# title: Constitutional compliance decision
# description: Decision document for a request (and optionally a proposed decision) checked against the constitution.
# entrypoint: true
# custom:
#   policy_type: constitutional_compliance
#   performance_tier: nano
#   uses_model: false
decision := doc.document("constitutional_compliance", deny_reasons, review_reasons, allow_reasons, 1, principles)
