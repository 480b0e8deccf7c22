package groqpolicy.policies.security_policies_test

import data.groqpolicy.policies.security_policies as policy

examples := {
	"allow": {
		"principal": {"id": "alice", "roles": ["analyst"], "mfa": false, "source_ip": "10.1.2.3"},
		"action": "read",
		"resource": {"type": "reports", "classification": "internal"},
	},
	"deny": {
		"principal": {"id": "bob", "roles": ["viewer"], "mfa": true, "source_ip": "10.1.2.3"},
		"action": "delete",
		"resource": {"type": "reports", "classification": "internal"},
	},
	"review": {
		"principal": {"id": "carol", "roles": ["operator"], "mfa": true, "source_ip": "203.0.113.7"},
		"action": "restart",
		"resource": {"type": "services", "classification": "internal"},
	},
}

with_principal(base, fields) := object.union(base, {"principal": fields})

test_examples if {
	every want, example in examples {
		d := policy.decision with input as example
		d.decision == want
	}
}

test_allow_reasons if {
	d := policy.decision with input as examples.allow
	d.reasons == ["role analyst grants reports:read"]
	d.confidence == 1
}

test_allow_wildcards if {
	admin := policy.decision with input as {
		"principal": {"id": "root", "roles": ["admin"], "mfa": true, "source_ip": "192.168.1.10"},
		"action": "delete", "resource": {"type": "datasets", "classification": "restricted"},
	}
	admin.decision == "allow"
	auditor := policy.decision with input as {
		"principal": {"id": "aud", "roles": ["auditor"], "mfa": true, "source_ip": "10.0.0.9"},
		"action": "read", "resource": {"type": "audit_logs", "classification": "confidential"},
	}
	auditor.decision == "allow"
}

test_deny_no_permission if {
	d := policy.decision with input as examples.deny
	d.reasons == ["deny: no role of the principal grants reports:delete"]
}

test_deny_unknown_role_and_missing_id if {
	d := policy.decision with input as with_principal(examples.allow, {"id": null, "roles": ["analyst", "superuser"]})
	d.decision == "deny"
	d.reasons == ["deny: principal has no id", `deny: role "superuser" is not defined`]
}

test_deny_mfa_required_by_role if {
	d := policy.decision with input as with_principal(examples.review, {"mfa": false, "source_ip": "10.0.0.1"})
	d.decision == "deny"
	d.reasons == ["deny: services:restart requires multi-factor authentication"]
}

test_deny_mfa_required_by_classification if {
	d := policy.decision with input as object.union(examples.allow, {"resource": {"classification": "confidential"}})
	d.decision == "deny"
	d.reasons == ["deny: reports:read requires multi-factor authentication"]
}

test_deny_restricted_from_untrusted_network if {
	d := policy.decision with input as {
		"principal": {"id": "root", "roles": ["admin"], "mfa": true, "source_ip": "198.51.100.4"},
		"action": "read", "resource": {"type": "datasets", "classification": "restricted"},
	}
	d.decision == "deny"
	d.reasons == ["deny: restricted resource from untrusted network 198.51.100.4"]
}

test_deny_bad_ip if {
	d := policy.decision with input as with_principal(examples.allow, {"source_ip": "not-an-ip"})
	d.decision == "deny"
	d.reasons == ["deny: source_ip is missing or not an IP address"]
	m := policy.decision with input as {"principal": {"id": "a", "roles": ["analyst"]}, "action": "read", "resource": {"type": "reports"}}
	m.decision == "deny"
}

test_review_sensitive_action_from_untrusted_network if {
	d := policy.decision with input as examples.review
	d.reasons == ["review: sensitive action restart from untrusted network 203.0.113.7"]
}

test_ipv6_allowlist if {
	d := policy.decision with input as with_principal(examples.review, {"source_ip": "2001:db8::1"})
		with data.groqpolicy.security.trusted_networks as ["2001:db8::/32"]
	d.decision == "allow"
}

test_untrusted_read_of_internal_is_allowed if {
	d := policy.decision with input as with_principal(examples.allow, {"source_ip": "203.0.113.7"})
	d.decision == "allow"
}
