package groqpolicy.policies.regulatory_compliance_test

import data.groqpolicy.policies.regulatory_compliance as policy

examples := {
	"allow": {
		"principal": {"id": "svc-crm"},
		"data_subject": {"region": "DE"},
		"processing": {"legal_basis": "contract", "destination_country": "JP"},
	},
	"deny": {
		"principal": {"id": "svc-crm"},
		"data_subject": {"region": "FR"},
		"processing": {"legal_basis": "contract", "destination_country": "US", "recipient_dpf_certified": false},
	},
	"review": {
		"principal": {"id": "svc-loans"},
		"data_subject": {"region": "NL"},
		"processing": {"legal_basis": "contract", "automated_decision": true, "legal_effect": true},
	},
}

test_examples if {
	every want, example in examples {
		d := policy.decision with input as example
		d.decision == want
	}
}

test_allow_reasons if {
	d := policy.decision with input as examples.allow
	d.reasons == ["GDPR: legal basis, special categories, transfer and Art. 22 checks passed"]
	n := policy.decision with input as {"data_subject": {"region": "BR"}, "processing": {}}
	n.decision == "allow"
	n.reasons == ["GDPR does not apply to this data subject"]
}

test_allow_us_dpf_and_scc if {
	dpf := policy.decision with input as {"data_subject": {"region": "EU"}, "processing": {"legal_basis": "consent", "destination_country": "US", "recipient_dpf_certified": true}}
	dpf.decision == "allow"
	scc := policy.decision with input as {"data_subject": {"region": "IE"}, "processing": {"legal_basis": "consent", "destination_country": "IN", "transfer_mechanism": "scc"}}
	scc.decision == "allow"
}

test_deny_transfer if {
	d := policy.decision with input as examples.deny
	d.reasons == ["deny: GDPR Chapter V: transfer to US has no adequacy decision and no SCC or BCR"]
}

test_deny_missing_legal_basis if {
	d := policy.decision with input as {"data_subject": {"region": "ES"}, "processing": {"legal_basis": "because"}}
	d.decision == "deny"
	d.reasons == [`deny: GDPR Art. 6: legal basis "because" is not one of consent, contract, legal_obligation, legitimate_interests, public_task, vital_interests`]
	e := policy.decision with input as {"data_subject": {"region": "ES"}}
	e.decision == "deny"
}

test_deny_special_category_without_explicit_consent if {
	d := policy.decision with input as {"data_subject": {"region": "SE"}, "processing": {"legal_basis": "consent", "special_category": true}}
	d.decision == "deny"
	ok := policy.decision with input as {"data_subject": {"region": "SE"}, "processing": {"legal_basis": "consent", "special_category": true, "explicit_consent": true}}
	ok.decision == "allow"
}

test_review_automated_decision if {
	d := policy.decision with input as examples.review
	d.reasons == ["review: GDPR Art. 22: automated decision with legal effect needs human review"]
	ok := policy.decision with input as object.union(examples.review, {"processing": {"legal_basis": "contract", "automated_decision": true, "legal_effect": true, "human_review": true}})
	ok.decision == "allow"
}

test_review_derogation if {
	d := policy.decision with input as {"data_subject": {"region": "AT"}, "processing": {"legal_basis": "consent", "destination_country": "CN", "transfer_mechanism": "derogation"}}
	d.decision == "review"
}

test_review_unknown_region if {
	d := policy.decision with input as {"processing": {"legal_basis": "consent"}}
	d.decision == "review"
	d.reasons == ["review: data subject region is unknown, so the applicable law cannot be determined"]
}
