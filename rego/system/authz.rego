# METADATA
# title: Who may use an OPA agent's own REST API
# description: |
#   OPA loads this policy when it runs with --authentication=token --authorization=basic
#   (what `groqpolicy up` starts): input.identity is the bearer token presented. Tokens are
#   known here only by their SHA-256 digests, which the control plane writes into every
#   bundle at data.groqpolicy.config.agent_api ({"admin": [...], "evaluate": [...]}).
#   Policies and data arrive only in signed bundles, so no identity may write through the
#   API (PUT /v1/policies, PUT/PATCH /v1/data) or run ad-hoc Rego (/v1/query, /v1/compile),
#   which could call out with http.send outside the compile step's checks.
package system.authz

default allow := false

# Liveness carries nothing secret, and supervisors probe it before they hold a token.
allow if {
	input.method == "GET"
	input.path[0] == "health"
}

# An evaluate token asks for decisions under data.groqpolicy, except the deployment's
# configuration (it carries the bridge token).
allow if {
	scopes.evaluate
	decision_query
}

# An admin token may read anything the API shows, and ask for any decision.
allow if {
	scopes.admin
	admin_read
}

scopes[name] := true if {
	some name, digests in data.groqpolicy.config.agent_api
	crypto.sha256(input.identity) in digests
}

decision_query if {
	input.method in {"GET", "POST"}
	input.path[0] == "v1"
	input.path[1] == "data"
	input.path[2] == "groqpolicy"
	input.path[3] != "config"
}

admin_read if {
	input.method in {"GET", "POST"}
	input.path[0] == "v1"
	input.path[1] == "data"
}

admin_read if {
	input.method == "GET"
	input.path[0] == "v1"
	input.path[1] in {"policies", "status", "config"}
}

admin_read if {
	input.method == "GET"
	input.path == ["metrics"]
}
