# METADATA
# title: Policy certification checks
# description: |
#   Deterministic checks a policy must pass before it may become active, evaluated by the
#   real opa over the policy (as it ships in the bundle), the library and the constitution.
#   The package sits outside the `groqpolicy` root on purpose: it refers to policies as
#   data.groqpolicy[kind][name], which would be recursive from inside that root, and it never
#   ships to agents.
#
#   input: {subject: {kind: "rules"|"policies", name}, declared: [principle ids],
#           probes: [{name, input}], tests: {declared, ran, failed: [names]}}
package groqpolicy_certification

constitutional_hash := "cdd01ef066bc6cf2"

outcomes := {"allow", "deny", "review"}

constitution := data.groqpolicy.constitution

constitution_ids := {p.id | some p in constitution.principles}

# -- the probes: each input the policy is evaluated on, under each model behaviour ------------

# The model helper forced to fail: what lib.groq returns when the bridge is unreachable.
forced_failure(_, tier, _, _) := data.groqpolicy.lib.groq.failure(tier, "certification probe: model call forced to fail")

# http.send itself, for policies that call the bridge (or anything else) without the helper.
http_down(_) := {"status_code": 0, "error": {"code": "eval_http_send_network_error", "message": "certification probe: forced failure"}}

model_answer(decision) := {"status_code": 200, "body": {
	"decision": decision, "confidence": 0.99, "rationale": "certification probe",
	"model": "certification-probe", "tier": "probe",
}}

model_allows(_) := model_answer("allow")

model_denies(_) := model_answer("deny")

examples := data.groqpolicy[input.subject.kind][concat("", [input.subject.name, "_test"])].examples

probes contains {"name": p.name, "input": p.input} if some p in input.probes

probes contains {"name": sprintf("example %v", [name]), "input": example} if some name, example in examples

decide_failing(probe) := d if {
	kind := input.subject.kind
	name := input.subject.name
	d := data.groqpolicy[kind][name].decision with input as probe
		with data.groqpolicy.lib.groq.judge_for as forced_failure
		with http.send as http_down
}

decide_allowing(probe) := d if {
	kind := input.subject.kind
	name := input.subject.name
	d := data.groqpolicy[kind][name].decision with input as probe with http.send as model_allows
}

decide_denying(probe) := d if {
	kind := input.subject.kind
	name := input.subject.name
	d := data.groqpolicy[kind][name].decision with input as probe with http.send as model_denies
}

runs contains {"probe": p.name, "mode": "model fails", "decision": decide_failing(p.input)} if some p in probes

runs contains {"probe": p.name, "mode": "model allows", "decision": decide_allowing(p.input)} if some p in probes

runs contains {"probe": p.name, "mode": "model denies", "decision": decide_denying(p.input)} if some p in probes

decided := {r.probe | some r in runs}

# -- principles: every one the policy declares is in the constitution ------------------------

declared contains p if some p in input.declared

declared contains p if {
	kind := input.subject.kind
	name := input.subject.name
	some p in data.groqpolicy[kind][name].principles with http.send as http_down
}

declared contains p if {
	some r in runs
	some p in r.decision.principles
}

unknown_principles contains p if {
	some p in declared
	not constitution_ids[p]
}

principle_problems contains sprintf("principle %v is not in the constitution (%s; known: %s)", [p, constitutional_hash, concat(", ", sort(constitution_ids))]) if {
	some p in unknown_principles
}

principle_problems contains sprintf("the constitution's hash is %v, want %s", [constitution.hash, constitutional_hash]) if {
	constitution.hash != constitutional_hash
}

# -- decisions carry an outcome, reasons and a confidence -----------------------------------

defects(d) := {"the decision is not an object"} if {
	not is_object(d)
} else := {why |
	some why in [_outcome_defect(d), _reasons_defect(d), _confidence_defect(d)]
	why != ""
}

_outcome_defect(d) := "" if {
	outcomes[d.decision]
} else := sprintf("decision %v is not one of allow, deny, review", [object.get(d, "decision", null)])

_reasons_defect(d) := "" if {
	_has_reasons(d)
} else := "no reasons (want a non-empty array of strings)"

_confidence_defect(d) := "" if {
	_has_confidence(d)
} else := sprintf("confidence %v is not a number in [0, 1]", [object.get(d, "confidence", null)])

_has_reasons(d) if {
	is_array(d.reasons)
	count(d.reasons) > 0
	every r in d.reasons {
		is_string(r)
		r != ""
	}
}

_has_confidence(d) if {
	is_number(d.confidence)
	d.confidence >= 0
	d.confidence <= 1
}

decision_problems contains sprintf("probe %s (%s): %s", [r.probe, r.mode, why]) if {
	some r in runs
	some why in defects(r.decision)
}

# -- fail closed: no allow on a path where the model call failed ------------------------------

# A probe consulted the model when its decision changes with the model's answer; the same
# document under every behaviour means no model call shaped it.
consulted(probe) if {
	failing := [r.decision | some r in runs; r.probe == probe; r.mode == "model fails"]
	others := [r.decision | some r in runs; r.probe == probe; r.mode != "model fails"]
	count(failing) + count(others) > 0
	{json.marshal(d) | some d in array.concat(failing, others)} != {json.marshal(d) | some d in failing}
}

consulted(probe) if {
	# decided only when the model answered (or only when it failed): the model shaped it
	count([r | some r in runs; r.probe == probe; r.mode == "model fails"]) == 0
	some r in runs
	r.probe == probe
}

fail_closed_problems contains sprintf("probe %s: allows when the model call fails (%v)", [r.probe, r.decision.reasons]) if {
	some r in runs
	r.mode == "model fails"
	r.decision.decision == "allow"
	consulted(r.probe)
}

# -- its own tests (opa test, run by the control plane before this evaluation) -----------------

test_problems contains sprintf("opa test: %d of %d failed: %s", [count(input.tests.failed), input.tests.ran, concat(", ", input.tests.failed)]) if {
	count(input.tests.failed) > 0
}

test_problems contains "opa test: the tests ran no test" if {
	input.tests.declared
	input.tests.ran == 0
}

check(name, problems, detail) := {"name": name, "passed": count(problems) == 0, "problems": sort(problems), "detail": detail}

report := {
	"checks": [
		check("principles", principle_problems, {"declared": sort(declared), "constitutional_hash": constitution.hash}),
		check("decisions", decision_problems, {"probes": count(probes), "decided": count(decided)}),
		check("fail_closed", fail_closed_problems, {"probes": count(probes), "consulted_model": count({p | some p in decided; consulted(p)})}),
		check("tests", test_problems, {"declared": input.tests.declared, "ran": input.tests.ran}),
	],
	"principles": [p | some p in constitution.principles; declared[p.id]],
	"passed": count(((principle_problems | decision_problems) | fail_closed_problems) | test_problems) == 0,
}
