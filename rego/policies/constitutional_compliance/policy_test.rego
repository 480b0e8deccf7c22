package groqpolicy.policies.constitutional_compliance_test

import data.groqpolicy.policies.constitutional_compliance as policy

examples := {
	"allow": {
		"constitutional_hash": "cdd01ef066bc6cf2",
		"principal": {"id": "svc-loans"},
		"action": "credit_decision",
		"oversight": {"escalation": "credit-review-queue"},
	},
	"deny": {
		"constitutional_hash": "cdd01ef066bc6cf2",
		"principal": {"id": "svc-loans"},
		"action": "credit_decision",
		"oversight": {"disabled": true},
	},
	"review": {
		"constitutional_hash": "cdd01ef066bc6cf2",
		"principal": {"id": "svc-loans"},
		"action": "credit_decision",
	},
}

test_examples if {
	every want, example in examples {
		d := policy.decision with input as example
		d.decision == want
	}
}

test_allow_document if {
	d := policy.decision with input as examples.allow
	d == {
		"decision": "allow",
		"reasons": ["request satisfies the constitution's invariants"],
		"confidence": 1,
		"policy": "constitutional_compliance",
		"constitutional_hash": "cdd01ef066bc6cf2",
		"principles": ["P1-human-oversight", "P2-fail-closed", "P5-transparency", "P9-accountability-audit"],
	}
}

test_deny_wrong_hash if {
	d := policy.decision with input as object.union(examples.allow, {"constitutional_hash": "deadbeef"})
	d.decision == "deny"
	d.reasons == [`deny: constitutional_hash mismatch (want: cdd01ef066bc6cf2, got: "deadbeef")`]
}

test_deny_disabled_oversight if {
	d := policy.decision with input as examples.deny
	d.reasons == [
		"deny: request asks to disable human oversight",
		"review: automated credit_decision about a person needs a human escalation path (oversight.escalation)",
	]
}

test_review_automated_person_decision_without_escalation if {
	d := policy.decision with input as examples.review
	d.reasons == ["review: automated credit_decision about a person needs a human escalation path (oversight.escalation)"]
}

test_proposed_decision_is_post_validated if {
	low := object.union(examples.allow, {"decision": {
		"decision": "allow", "confidence": 0.4, "reasons": ["looks fine"],
		"constitutional_hash": "cdd01ef066bc6cf2",
	}})
	d := policy.decision with input as low
	d.decision == "review"

	contradicting := object.union(examples.allow, {"decision": {
		"decision": "allow", "confidence": 0.99, "reasons": ["deny: no consent"],
		"constitutional_hash": "cdd01ef066bc6cf2",
	}})
	e := policy.decision with input as contradicting
	e.decision == "deny"
}

test_proposed_deny_and_review_stand if {
	deny := object.union(examples.allow, {"decision": {
		"decision": "deny", "confidence": 1, "reasons": ["deny: x"],
		"constitutional_hash": "cdd01ef066bc6cf2",
	}})
	d := policy.decision with input as deny
	d.decision == "deny"
	d.reasons == ["deny: proposed decision is deny"]

	review := object.union(examples.allow, {"decision": {
		"decision": "review", "confidence": 1, "reasons": ["review: y"],
		"constitutional_hash": "cdd01ef066bc6cf2",
	}})
	r := policy.decision with input as review
	r.decision == "review"
}
