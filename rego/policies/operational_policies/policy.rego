# METADATA
# title: Operational policies
# description: |
#   Change management and quotas: production changes need a change ticket, are refused
#   during a change freeze and escalated outside the maintenance window (Mon-Thu
#   08:00-16:00 UTC); emergency changes always go to a human; request rates above the
#   principal's plan quota are refused. Pure rules.
#
#   input: {principal: {id, plan}, operation: {type, environment, change_ticket?,
#           emergency?}, usage?: {requests_last_minute}, request_time?: RFC 3339}
#   request_time pins the clock (replays, tests); without it the evaluation time is used.
package groqpolicy.policies.operational_policies

import data.groqpolicy.lib.decision as doc

principles := [
	"P1-human-oversight",
	"P3-least-privilege",
	"P9-accountability-audit",
	"P10-proportional-risk",
]

change_types := {"deploy", "config_change", "migration", "restart", "rollback"}

# Requests per minute per plan; an unknown plan gets the smallest quota.
quotas := {"free": 60, "standard": 600, "enterprise": 6000}

maintenance_days := {"Monday", "Tuesday", "Wednesday", "Thursday"}

maintenance_hours := {"start": 8, "end": 16}

# Change freezes as [start, end) RFC 3339 intervals; data.groqpolicy.config can replace them.
default change_freezes := [{"name": "year-end freeze", "start": "2026-12-21T00:00:00Z", "end": "2027-01-04T00:00:00Z"}]

change_freezes := data.groqpolicy.config.change_freezes

now_ns := time.parse_rfc3339_ns(input.request_time) if is_string(input.request_time)

else := time.now_ns()

_op := object.get(input, "operation", {})

_production_change if {
	change_types[_op.type]
	_op.environment == "production"
}

_emergency if _op.emergency == true

_quota := quotas[input.principal.plan] if quotas[input.principal.plan]

else := quotas.free

_in_maintenance_window if {
	maintenance_days[time.weekday(now_ns)]
	[hour, _, _] := time.clock(now_ns)
	hour >= maintenance_hours.start
	hour < maintenance_hours.end
}

_active_freezes contains freeze.name if {
	some freeze in change_freezes
	now_ns >= time.parse_rfc3339_ns(freeze.start)
	now_ns < time.parse_rfc3339_ns(freeze.end)
}

deny_reasons contains msg if {
	input.usage.requests_last_minute > _quota
	msg := concat("", [
		"rate quota exceeded: ", format_int(input.usage.requests_last_minute, 10),
		" requests in the last minute, plan allows ", format_int(_quota, 10),
	])
}

deny_reasons contains msg if {
	_production_change
	not _emergency
	some name in _active_freezes
	msg := concat("", ["production ", _op.type, " during ", name])
}

deny_reasons contains msg if {
	_production_change
	not _emergency
	not _ticket
	msg := concat("", ["production ", _op.type, " without a change ticket"])
}

_ticket if {
	is_string(_op.change_ticket)
	_op.change_ticket != ""
}

review_reasons contains msg if {
	_production_change
	_emergency
	msg := concat("", ["emergency production ", _op.type, " needs an on-call approver"])
}

review_reasons contains msg if {
	_production_change
	not _emergency
	count(_active_freezes) == 0
	not _in_maintenance_window
	msg := concat("", ["production ", _op.type, " outside the maintenance window (Mon-Thu 08:00-16:00 UTC)"])
}

allow_reasons contains "within quota; no production change outside policy"

# METADATA
# title: Operational policies decision
# description: Change tickets, maintenance windows, change freezes and rate quotas.
# entrypoint: true
# custom:
#   policy_type: operational_policies
#   performance_tier: nano
#   uses_model: false
decision := doc.document("operational_policies", deny_reasons, review_reasons, allow_reasons, 1, principles)
