package groqpolicy.policies.data_governance_test

import data.groqpolicy.policies.data_governance as policy

examples := {
	"allow": {
		"principal": {"id": "svc-support"},
		"purpose": "support",
		"fields": ["full_name", "email"],
		"consent": [],
		"record_age_days": 30,
	},
	"deny": {
		"principal": {"id": "svc-analytics"},
		"purpose": "analytics",
		"fields": ["email", "page_views"],
		"record_age_days": 10,
	},
	"review": {
		"principal": {"id": "svc-support"},
		"purpose": "support",
		"fields": ["full_name", "loyalty_tier"],
		"record_age_days": 5,
	},
	# With no bridge reachable this asks the model, fails, and fails closed.
	"model_review": {
		"principal": {"id": "svc-support"},
		"purpose": "support",
		"fields": ["full_name"],
		"record_age_days": 5,
		"free_text": "Customer says the invoice for last month was sent twice.",
	},
}

with_text := object.union(examples.allow, {"free_text": "Caller is unhappy about the delay."})

model(decision, confidence) := {"status_code": 200, "body": {
	"decision": decision, "confidence": confidence, "rationale": "checked",
	"model": "openai/gpt-oss-20b", "tier": "fast",
}}

model_allow(_) := model("allow", 0.95)

model_deny(_) := model("deny", 0.9)

model_review(_) := model("review", 0.9)

model_unsure_deny(_) := model("deny", 0.6)

model_down(_) := {"status_code": 0, "error": {"code": "eval_http_send_network_error", "message": "connection refused"}}

model_garbage(_) := {"status_code": 200, "body": {"decision": "allow", "confidence": 7}}

test_examples if {
	every name, example in examples {
		d := policy.decision with input as example with http.send as model_down
		d.decision == trim_prefix(name, "model_")
	}
}

test_review_unclassified_field if {
	d := policy.decision with input as examples.review
	d.reasons == [`review: field "loyalty_tier" is not classified in the data catalog`]
	not policy.needs_model with input as examples.review
}

test_allow_within_purpose if {
	d := policy.decision with input as examples.allow
	d.decision == "allow"
	d.confidence == 1
	d.reasons == ["fields are within purpose support and retention"]
	not policy.needs_model with input as examples.allow
}

test_deny_minimisation if {
	d := policy.decision with input as examples.deny
	d.decision == "deny"
	d.reasons == ["deny: field email is personal data not needed for purpose analytics (data minimisation)"]
}

test_deny_unknown_purpose if {
	d := policy.decision with input as object.union(examples.allow, {"purpose": "resale"})
	d.decision == "deny"
	d.reasons == [`deny: purpose "resale" is not a registered processing purpose`]
}

test_deny_special_category_without_consent if {
	d := policy.decision with input as {"purpose": "research", "fields": ["health_record"], "record_age_days": 1}
	d.decision == "deny"
	d.reasons == [
		"deny: field health_record is special-category data and needs explicit consent for this purpose",
		"deny: purpose research needs the data subject's consent, which is not recorded",
	]
	ok := policy.decision with input as {"purpose": "research", "fields": ["health_record"], "consent": ["research"], "record_age_days": 1}
	ok.decision == "allow"
}

test_deny_marketing_without_consent if {
	d := policy.decision with input as {"purpose": "marketing", "fields": ["email"], "consent": ["support"]}
	d.decision == "deny"
}

test_deny_past_retention if {
	d := policy.decision with input as object.union(examples.allow, {"record_age_days": 800})
	d.decision == "deny"
	d.reasons == ["deny: records are 800 days old, past the 730-day retention for support"]
}

test_deny_obvious_pii_in_free_text_without_model if {
	inp := object.union(examples.allow, {"free_text": "please call me back on +44 20 7946 0958"})
	d := policy.decision with input as inp with http.send as model_allow
	d.decision == "deny"
	not policy.needs_model with input as inp
	e := policy.decision with input as object.union(examples.allow, {"free_text": "write to jane.doe@example.org"})
	e.decision == "deny"
}

test_model_not_asked_when_rules_deny if {
	inp := object.union(examples.deny, {"free_text": "anything"})
	not policy.needs_model with input as inp
	d := policy.decision with input as inp with http.send as model_allow
	d.decision == "deny"
}

test_model_confident_allow if {
	d := policy.decision with input as with_text with http.send as model_allow
	d.decision == "allow"
	d.confidence == 0.95
	d.reasons == [
		"fields are within purpose support and retention",
		"model (fast, openai/gpt-oss-20b) judged allow with confidence 95%: checked",
	]
}

test_model_confident_deny if {
	d := policy.decision with input as with_text with http.send as model_deny
	d.decision == "deny"
	d.confidence == 0.9
	d.reasons == ["deny: free text holds personal data: model (fast, openai/gpt-oss-20b) judged deny with confidence 90%: checked"]
}

test_model_review_is_review if {
	d := policy.decision with input as with_text with http.send as model_review
	d.decision == "review"
}

test_model_low_confidence_is_review if {
	d := policy.decision with input as with_text with http.send as model_unsure_deny
	d.decision == "review"
	d.confidence == 0.6
	d.reasons == ["review: model (fast, openai/gpt-oss-20b) answered deny with confidence 60%, below the required 80%"]
}

test_model_failure_is_review if {
	d := policy.decision with input as with_text with http.send as model_down
	d.decision == "review"
	d.confidence == 0
	d.reasons == ["review: model unavailable: bridge unreachable: connection refused"]
	g := policy.decision with input as with_text with http.send as model_garbage
	g.decision == "review"
}
