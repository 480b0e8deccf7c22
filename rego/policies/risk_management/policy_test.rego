package groqpolicy.policies.risk_management_test

import data.groqpolicy.policies.risk_management as policy

examples := {
	"allow": {
		"principal": {"id": "svc-payments"},
		"transaction": {"amount": 250, "currency": "EUR", "country": "DE"},
		"risk": {"score": 10, "factors": ["new_device"]},
	},
	"deny": {
		"principal": {"id": "svc-payments"},
		"transaction": {"amount": 15000, "currency": "EUR", "country": "DE"},
		"risk": {"score": 30, "factors": ["velocity_spike", "new_account"]},
	},
	"review": {
		"principal": {"id": "svc-payments"},
		"transaction": {"amount": 2500, "currency": "EUR", "country": "DE"},
		"risk": {"score": 20, "factors": ["geo_mismatch"]},
	},
}

test_examples if {
	every want, example in examples {
		d := policy.decision with input as example
		d.decision == want
	}
}

test_scores if {
	policy.score == 20 with input as examples.allow
	policy.score == 90 with input as examples.deny
	policy.score == 50 with input as examples.review
	policy.score == 100 with input as {"transaction": {"amount": 50000}, "risk": {"score": 99, "factors": ["pep"]}}
}

test_allow_reason if {
	d := policy.decision with input as examples.allow
	d.reasons == ["risk score 20 is below the review threshold 40"]
}

test_deny_reason if {
	d := policy.decision with input as examples.deny
	d.reasons == ["deny: risk score 90 is at or above the deny threshold 70"]
}

test_deny_sanctioned_country_whatever_the_score if {
	d := policy.decision with input as object.union(examples.allow, {"transaction": {"country": "KP"}})
	d.decision == "deny"
	d.reasons == ["deny: transaction involves sanctioned country KP"]
}

test_review_band if {
	d := policy.decision with input as examples.review
	d.reasons == ["review: risk score 50 is in the review band [40, 70)"]
}

test_review_invalid_score_is_not_trusted if {
	d := policy.decision with input as object.union(examples.allow, {"risk": {"score": "low"}})
	d.decision == "review"
	d.reasons == [`review: risk.score "low" is not a number in [0, 100]`]
	e := policy.decision with input as object.union(examples.allow, {"risk": {"score": -5}})
	e.decision == "review"
}

test_review_missing_amount if {
	d := policy.decision with input as {"transaction": {"currency": "EUR"}}
	d.decision == "review"
	d.reasons == ["review: transaction amount is missing or not a number"]
}

test_review_unknown_factor if {
	d := policy.decision with input as object.union(examples.allow, {"risk": {"factors": ["moon_phase"]}})
	d.decision == "review"
	d.reasons == [`review: unrecognised risk factor "moon_phase"`]
}
