# METADATA
# title: Risk management
# description: |
#   Scores a transaction (a caller-supplied base score plus weighted risk factors and
#   amount bands, capped at 100) and applies proportional thresholds: below 40 allow,
#   40-69 review, 70 and above deny. Sanctioned countries are refused whatever the
#   score; a malformed score is escalated, never trusted. Pure rules.
#
#   input: {principal, transaction: {amount, currency, country}, risk?: {score?: 0..100,
#           factors?: [..]}}
package groqpolicy.policies.risk_management

import data.groqpolicy.lib.decision as doc

principles := [
	"P2-fail-closed",
	"P8-lawful-processing",
	"P10-proportional-risk",
]

thresholds := {"review": 40, "deny": 70}

factor_weights := {
	"new_account": 15,
	"new_device": 10,
	"geo_mismatch": 20,
	"vpn_or_proxy": 10,
	"velocity_spike": 25,
	"chargeback_history": 30,
	"politically_exposed_person": 20,
}

# An unrecognised factor still counts: unknown is not the same as harmless.
unknown_factor_weight := 10

# Comprehensive sanctions (ISO 3166-1 alpha-2); illustrative, not legal advice.
sanctioned_countries := {"CU", "IR", "KP", "SY"}

_risk := object.get(input, "risk", {})

_factors := {f | some f in object.get(_risk, "factors", [])}

_base_score := _risk.score if {
	_valid_score
} else := 0

_valid_score if {
	is_number(_risk.score)
	_risk.score >= 0
	_risk.score <= 100
}

# A helper rule, not `not is_number(input.transaction.amount)`: see regulatory_compliance.
_amount_valid if is_number(input.transaction.amount)

_amount_points := 20 if {
	input.transaction.amount > 10000
} else := 10 if {
	input.transaction.amount > 1000
} else := 0

_factor_points := sum([object.get(factor_weights, f, unknown_factor_weight) | some f in _factors])

score := min([100, (_base_score + _factor_points) + _amount_points])

deny_reasons contains msg if {
	sanctioned_countries[input.transaction.country]
	msg := concat("", ["transaction involves sanctioned country ", input.transaction.country])
}

deny_reasons contains msg if {
	score >= thresholds.deny
	msg := concat("", ["risk score ", format_int(score, 10), " is at or above the deny threshold ", format_int(thresholds.deny, 10)])
}

review_reasons contains msg if {
	score >= thresholds.review
	score < thresholds.deny
	msg := concat("", ["risk score ", format_int(score, 10), " is in the review band [", format_int(thresholds.review, 10), ", ", format_int(thresholds.deny, 10), ")"])
}

review_reasons contains msg if {
	"score" in object.keys(_risk)
	not _valid_score
	msg := concat("", ["risk.score ", json.marshal(_risk.score), " is not a number in [0, 100]"])
}

review_reasons contains "transaction amount is missing or not a number" if {
	not _amount_valid
}

review_reasons contains msg if {
	some f in _factors
	not factor_weights[f]
	msg := concat("", ["unrecognised risk factor ", json.marshal(f)])
}

allow_reasons contains msg if {
	msg := concat("", ["risk score ", format_int(score, 10), " is below the review threshold ", format_int(thresholds.review, 10)])
}

# METADATA
# title: Risk management decision
# description: Risk score from base score, factors and amount, against review and deny thresholds.
# entrypoint: true
# custom:
#   policy_type: risk_management
#   performance_tier: nano
#   uses_model: false
decision := doc.document("risk_management", deny_reasons, review_reasons, allow_reasons, 1, principles)
