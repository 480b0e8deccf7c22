package groqpolicy.constitution_test

import data.groqpolicy.constitution
import data.groqpolicy.lib.decision as doc

good_request := {"constitutional_hash": "cdd01ef066bc6cf2", "principal": {"id": "svc-billing"}}

test_hash_in_data_matches_library if {
	constitution.constitutional_hash == "cdd01ef066bc6cf2"
	doc.constitutional_hash == constitution.constitutional_hash
}

test_principles_have_unique_ids_and_valid_severities if {
	ps := data.groqpolicy.constitution.principles
	count(ps) >= 8
	count(constitution.principle_ids) == count(ps)
	every p in ps {
		p.severity in {"deny", "review"}
		p.title != ""
		p.text != ""
	}
}

test_principle_lookup if {
	constitution.principle("P2-fail-closed").severity == "deny"
	not constitution.principle("P99-nope")
}

policy_types := [
	"constitutional_compliance", "data_governance", "ethical_constraints",
	"regulatory_compliance", "operational_policies", "security_policies", "risk_management",
]

test_policies_only_cite_known_principles if {
	every name in policy_types {
		count(data.groqpolicy.policies[name].principles) > 0
		every id in data.groqpolicy.policies[name].principles {
			constitution.principle_ids[id]
		}
	}
}

# ---------------------------------------------------------------- pre_validation

test_pre_allow if {
	r := constitution.pre_validation with input as good_request
	r.decision == "allow"
	r.violations == []
	r.constitutional_hash == "cdd01ef066bc6cf2"
	r.reasons == ["no constitutional violations"]
}

test_pre_principal_as_string if {
	r := constitution.pre_validation with input as {"constitutional_hash": "cdd01ef066bc6cf2", "principal": "alice"}
	r.decision == "allow"
}

test_pre_missing_hash_denies if {
	r := constitution.pre_validation with input as {"principal": {"id": "alice"}}
	r.decision == "deny"
	r.violations == [{"principle": "P9-accountability-audit", "severity": "deny", "message": "constitutional_hash is missing"}]
}

test_pre_wrong_hash_denies if {
	r := constitution.pre_validation with input as object.union(good_request, {"constitutional_hash": "0000"})
	r.decision == "deny"
	r.reasons == [`deny: constitutional_hash mismatch (want: cdd01ef066bc6cf2, got: "0000")`]
}

test_pre_missing_principal_denies if {
	r := constitution.pre_validation with input as {"constitutional_hash": "cdd01ef066bc6cf2", "principal": {"id": ""}}
	r.decision == "deny"
	r.violations[0].principle == "P9-accountability-audit"
}

test_pre_disabling_oversight_denies if {
	every override in [
		{"oversight": {"disabled": true}},
		{"oversight": {"human_review": false}},
		{"options": {"skip_human_review": true}},
	] {
		r := constitution.pre_validation with input as object.union(good_request, override)
		r.decision == "deny"
		r.violations[0].principle == "P1-human-oversight"
	}
}

test_pre_disabling_audit_denies if {
	r := constitution.pre_validation with input as object.union(good_request, {"audit": {"disabled": true}})
	r.decision == "deny"
	r.reasons == ["deny: request asks to disable audit logging"]
}

# ---------------------------------------------------------------- post_validation

proposed(overrides) := object.union(
	{
		"decision": "allow",
		"reasons": ["role analyst grants reports:read"],
		"confidence": 1,
		"policy": "security_policies",
		"constitutional_hash": "cdd01ef066bc6cf2",
		"principles": ["P3-least-privilege"],
	},
	overrides,
)

test_post_allow_stands if {
	r := constitution.post_validation with input as {"decision": proposed({})}
	r.decision == "allow"
	r.violations == []
	r.reasons == ["role analyst grants reports:read"]
	r.confidence == 1
}

test_post_deny_and_review_stand if {
	d := constitution.post_validation with input as {"decision": proposed({"decision": "deny", "reasons": ["deny: x"]})}
	d.decision == "deny"
	d.violations == []
	r := constitution.post_validation with input as {"decision": proposed({"decision": "review", "reasons": ["review: y"], "confidence": 0.2})}
	r.decision == "review"
	r.confidence == 0.2
}

test_post_low_confidence_allow_is_review if {
	r := constitution.post_validation with input as {"decision": proposed({"confidence": 0.55})}
	r.decision == "review"
	r.violations[0].principle == "P1-human-oversight"
	r.reasons[0] == "review: allow with confidence 0.55 below 0.7 needs a human reviewer"
}

test_post_threshold_is_configurable if {
	r := constitution.post_validation with input as {"decision": proposed({"confidence": 0.55})}
		with data.groqpolicy.config.min_allow_confidence as 0.5
	r.decision == "allow"
}

test_post_model_allow_without_oversight_is_review if {
	model_reason := "model (fast, openai/gpt-oss-20b) judged allow with confidence 93%: benign"
	r := constitution.post_validation with input as {"decision": proposed({"reasons": [model_reason], "confidence": 0.93})}
	r.decision == "review"
	r.violations[0].message == "allow rests on a model judgment but no human escalation path is configured (oversight.escalation)"
	ok := constitution.post_validation with input as {
		"decision": proposed({"reasons": [model_reason], "confidence": 0.93}),
		"oversight": {"escalation": "trust-and-safety-queue"},
	}
	ok.decision == "allow"
	flagged := constitution.post_validation with input as {"decision": proposed({"model_based": true})}
	flagged.decision == "review"
}

test_post_allow_contradicting_deny_reason_is_deny if {
	r := constitution.post_validation with input as {"decision": proposed({"reasons": ["deny: no role grants x"]})}
	r.decision == "deny"
	r.violations[0].principle == "P2-fail-closed"
	r.reasons[0] == "deny: allow contradicts its own deny reason: deny: no role grants x"
}

test_post_invalid_decision_is_deny if {
	r := constitution.post_validation with input as {"decision": proposed({"decision": "yes"})}
	r.decision == "deny"
	s := constitution.post_validation with input as {"decision": "allow"}
	s.decision == "review" # a bare string: no reasons (P5) and no confidence (P1)
	m := constitution.post_validation with input as {}
	m.decision == "deny"
	m.confidence == 1
	missing := constitution.post_validation with input as {"decision": object.remove(proposed({}), ["decision"])}
	missing.decision == "deny"
	missing.reasons[0] == "deny: decision: want one of allow, deny, review, got null"
}

test_post_wrong_hash_is_deny if {
	r := constitution.post_validation with input as {"decision": proposed({"constitutional_hash": "abc"})}
	r.decision == "deny"
	r.violations[0].principle == "P9-accountability-audit"
}

test_post_no_reasons_is_review if {
	r := constitution.post_validation with input as {"decision": proposed({"decision": "deny", "reasons": []})}
	r.decision == "deny"
	r.violations[0].principle == "P5-transparency"
}

test_post_invalid_confidence_reports_zero if {
	r := constitution.post_validation with input as {"decision": proposed({"decision": "review", "reasons": ["review: z"], "confidence": "high"})}
	r.decision == "review"
	r.confidence == 0
}

test_reasons_without_any if {
	doc.reasons(set(), set(), set()) == ["all checks passed"]
}

test_strictest if {
	doc.strictest("allow", "review") == "review"
	doc.strictest("deny", "review") == "deny"
	doc.strictest("allow", "allow") == "allow"
	doc.strictest("allow", "bogus") == "deny"
	doc.strictest("bogus", "allow") == "deny"
}

# ---------------------------------------------------------------- batches

test_pre_validations_is_pre_validation_of_each_request_in_order if {
	bad := object.remove(good_request, ["principal"])
	rs := constitution.pre_validations with input as [good_request, bad, good_request]
	count(rs) == 3
	rs[0] == constitution.pre_validation with input as good_request
	rs[1] == constitution.pre_validation with input as bad
	rs[1].decision == "deny"
	rs[2].decision == "allow"
}

test_post_validations_is_post_validation_of_each_proposal_in_order if {
	ok := {"constitutional_hash": "cdd01ef066bc6cf2", "decision": {
		"decision": "allow", "reasons": ["policy x allowed"], "confidence": 0.9,
		"constitutional_hash": "cdd01ef066bc6cf2",
	}}
	unsure := json.patch(ok, [{"op": "replace", "path": "/decision/confidence", "value": 0.1}])
	rs := constitution.post_validations with input as [ok, unsure]
	[r.decision | some r in rs] == ["allow", "review"]
	rs[1] == constitution.post_validation with input as unsure
	constitution.pre_validations == [] with input as []
}
