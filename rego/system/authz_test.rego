package system.authz_test

import data.system.authz

api := {"admin": [crypto.sha256("admin-token")], "evaluate": [crypto.sha256("admin-token"), crypto.sha256("eval-token")]}

allowed(method, path, identity) if {
	authz.allow with input as {"method": method, "path": path, "identity": identity}
		with data.groqpolicy.config.agent_api as api
}

anonymous(method, path) if {
	authz.allow with input as {"method": method, "path": path}
		with data.groqpolicy.config.agent_api as api
}

test_health_is_open if {
	anonymous("GET", ["health"])
}

test_nothing_else_is_open if {
	not anonymous("POST", ["v1", "data", "groqpolicy", "policies", "x", "decision"])
	not anonymous("PUT", ["v1", "policies", "x"])
}

test_an_unknown_token_is_refused if {
	not allowed("POST", ["v1", "data", "groqpolicy", "policies", "x", "decision"], "guess")
}

test_evaluate_asks_for_decisions if {
	allowed("POST", ["v1", "data", "groqpolicy", "policies", "x", "decision"], "eval-token")
	allowed("GET", ["v1", "data", "groqpolicy", "rules", "p_1", "decision"], "eval-token")
}

test_evaluate_may_not_read_the_configuration_or_all_data if {
	not allowed("POST", ["v1", "data", "groqpolicy", "config", "bridge_token"], "eval-token")
	not allowed("POST", ["v1", "data", "groqpolicy"], "eval-token")
	not allowed("POST", ["v1", "data"], "eval-token")
	not allowed("GET", ["v1", "policies"], "eval-token")
}

test_admin_reads if {
	allowed("POST", ["v1", "data"], "admin-token")
	allowed("GET", ["v1", "policies", "x"], "admin-token")
	allowed("GET", ["v1", "status"], "admin-token")
	allowed("GET", ["metrics"], "admin-token")
}

test_nobody_writes_or_runs_ad_hoc_rego if {
	not allowed("PUT", ["v1", "policies", "x"], "admin-token")
	not allowed("DELETE", ["v1", "policies", "x"], "admin-token")
	not allowed("PUT", ["v1", "data", "groqpolicy"], "admin-token")
	not allowed("PATCH", ["v1", "data", "groqpolicy"], "admin-token")
	not allowed("POST", ["v1", "query"], "admin-token")
	not allowed("POST", ["v1", "compile"], "admin-token")
}
