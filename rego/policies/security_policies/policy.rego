# METADATA
# title: Security policies
# description: |
#   Role-based access control with roles from data.groqpolicy.security.roles
#   ("resource:action" permissions, "*" wildcards), MFA for roles and resources that
#   demand it, and a network allowlist (net.cidr_contains): restricted resources only
#   from trusted networks, sensitive actions from elsewhere go to a human. Pure rules.
#
#   input: {principal: {id, roles: [..], mfa: bool, source_ip}, action,
#           resource: {type, classification?: public|internal|confidential|restricted}}
package groqpolicy.policies.security_policies

import data.groqpolicy.lib.decision as doc

principles := [
	"P2-fail-closed",
	"P3-least-privilege",
	"P9-accountability-audit",
]

_security := data.groqpolicy.security

_principal := object.get(input, "principal", {})

_roles := {r | some r in _principal.roles; _security.roles[r]}

_permission := concat(":", [input.resource.type, input.action])

_classification := object.get(input.resource, "classification", "internal")

_granted_by contains role if {
	some role in _roles
	some pattern in _security.roles[role].permissions
	glob.match(pattern, [":"], _permission)
}

_mfa_required if {
	some role in _granted_by
	_security.roles[role].mfa_required == true
}

_mfa_required if _classification in {"confidential", "restricted"}

# A helper rule, not `not is_string(_principal.id)`: see regulatory_compliance.
_has_id if is_string(_principal.id)

_trusted_source if {
	some cidr in _security.trusted_networks
	net.cidr_contains(cidr, _principal.source_ip)
}

deny_reasons contains "principal has no id" if {
	not _has_id
}

deny_reasons contains msg if {
	some r in _principal.roles
	not _security.roles[r]
	msg := concat("", ["role ", json.marshal(r), " is not defined"])
}

deny_reasons contains msg if {
	count(_granted_by) == 0
	msg := concat("", ["no role of the principal grants ", _permission])
}

deny_reasons contains msg if {
	_mfa_required
	not _principal.mfa == true
	msg := concat("", [_permission, " requires multi-factor authentication"])
}

deny_reasons contains "source_ip is missing or not an IP address" if {
	not _valid_ip
}

deny_reasons contains msg if {
	_valid_ip
	_classification == "restricted"
	not _trusted_source
	msg := concat("", ["restricted resource from untrusted network ", _principal.source_ip])
}

review_reasons contains msg if {
	_valid_ip
	_classification != "restricted"
	not _trusted_source
	input.action in _security.sensitive_actions
	msg := concat("", ["sensitive action ", input.action, " from untrusted network ", _principal.source_ip])
}

# net.cidr_contains fails (and so is undefined) on a malformed address; checking the
# address against the whole IPv4 or IPv6 space turns that into a plain condition.
_valid_ip if net.cidr_contains("0.0.0.0/0", _principal.source_ip)

_valid_ip if net.cidr_contains("::/0", _principal.source_ip)

allow_reasons contains msg if {
	some role in _granted_by
	msg := concat("", ["role ", role, " grants ", _permission])
}

# METADATA
# title: Security policies decision
# description: RBAC, MFA and network allowlist for an action on a resource.
# entrypoint: true
# custom:
#   policy_type: security_policies
#   performance_tier: nano
#   uses_model: false
decision := doc.document("security_policies", deny_reasons, review_reasons, allow_reasons, 1, principles)
