package groqpolicy.policies.operational_policies_test

import data.groqpolicy.policies.operational_policies as policy

# 2026-11-24 is a Tuesday; 2026-11-27 a Friday; 2026-12-22 falls in the year-end freeze.
examples := {
	"allow": {
		"principal": {"id": "deployer", "plan": "standard"},
		"operation": {"type": "deploy", "environment": "production", "change_ticket": "CHG-1042"},
		"usage": {"requests_last_minute": 120},
		"request_time": "2026-11-24T10:30:00Z",
	},
	"deny": {
		"principal": {"id": "deployer", "plan": "standard"},
		"operation": {"type": "deploy", "environment": "production", "change_ticket": "CHG-1043"},
		"usage": {"requests_last_minute": 120},
		"request_time": "2026-12-22T10:30:00Z",
	},
	"review": {
		"principal": {"id": "deployer", "plan": "standard"},
		"operation": {"type": "deploy", "environment": "production", "change_ticket": "CHG-1044"},
		"usage": {"requests_last_minute": 120},
		"request_time": "2026-11-27T20:00:00Z",
	},
}

test_examples if {
	every want, example in examples {
		d := policy.decision with input as example
		d.decision == want
	}
}

test_allow_in_window if {
	d := policy.decision with input as examples.allow
	d.reasons == ["within quota; no production change outside policy"]
}

test_allow_non_production_any_time if {
	d := policy.decision with input as {
		"principal": {"id": "dev", "plan": "free"},
		"operation": {"type": "deploy", "environment": "staging"},
		"request_time": "2026-12-25T23:00:00Z",
	}
	d.decision == "allow"
}

test_deny_during_freeze if {
	d := policy.decision with input as examples.deny
	d.reasons == ["deny: production deploy during year-end freeze"]
}

test_freezes_are_configurable if {
	d := policy.decision with input as examples.allow
		with data.groqpolicy.config.change_freezes as [{"name": "incident freeze", "start": "2026-11-24T00:00:00Z", "end": "2026-11-25T00:00:00Z"}]
	d.decision == "deny"
	d.reasons == ["deny: production deploy during incident freeze"]
}

test_deny_without_ticket if {
	inp := object.union(object.remove(examples.allow, ["operation"]), {"operation": {"type": "migration", "environment": "production"}})
	d := policy.decision with input as inp
	d.decision == "deny"
	d.reasons == ["deny: production migration without a change ticket"]
}

test_deny_quota_exceeded if {
	d := policy.decision with input as object.union(examples.allow, {"usage": {"requests_last_minute": 601}})
	d.decision == "deny"
	d.reasons == ["deny: rate quota exceeded: 601 requests in the last minute, plan allows 600"]
	free := policy.decision with input as {"principal": {"id": "x", "plan": "mystery"}, "usage": {"requests_last_minute": 61}, "request_time": "2026-11-24T10:30:00Z"}
	free.decision == "deny"
}

test_review_outside_window if {
	d := policy.decision with input as examples.review
	d.reasons == ["review: production deploy outside the maintenance window (Mon-Thu 08:00-16:00 UTC)"]
	early := policy.decision with input as object.union(examples.allow, {"request_time": "2026-11-24T07:59:59Z"})
	early.decision == "review"
}

test_review_emergency if {
	d := policy.decision with input as object.union(examples.deny, {"operation": {"type": "rollback", "environment": "production", "emergency": true}})
	d.decision == "review"
	d.reasons == ["review: emergency production rollback needs an on-call approver"]
}

test_clock_defaults_to_now if {
	inp := object.remove(examples.allow, ["request_time"])
	d := policy.decision with input as inp with time.now_ns as 1764153000000000000 # 2025-11-26T10:30:00Z, a Wednesday
	d.decision == "allow"
	e := policy.decision with input as inp with time.now_ns as 1764356400000000000 # 2025-11-28T19:00:00Z, a Friday
	e.decision == "review"
}
