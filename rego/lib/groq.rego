# METADATA
# title: GroqCloud judgments through the bridge gateway
# description: |
#   judge/judge_for ask one performance tier a question through the bridge gateway
#   (POST <bridge_url>/v1/infer/<tier>) with http.send, and return a normalised answer
#   {decision, confidence, rationale, model, tier, ok, reason}. Every failure (transport
#   error, non-200 status, missing or invalid decision, confidence outside [0, 1],
#   unknown tier) becomes decision "review" with ok false and a reason: the helper
#   fails closed and never turns a failure into an allow. Tier "auto" lets the bridge
#   choose the tier from what the question needs (context size, the deadline against
#   measured latency, strict schema); the answer then names the tier chosen and carries
#   the bridge's reason for it as route.
package groqpolicy.lib.groq

tiers := {"nano", "fast", "balanced", "premium", "reasoning", "auto"}

decisions := {"allow", "deny", "review"}

constitutional_hash := "cdd01ef066bc6cf2"

# Configuration comes from data.groqpolicy.config (a bundle's or the agent's data).
# object.get(data, [...], default) would be the natural spelling, but any rule that
# reads all of `data` depends on itself, which OPA rejects as recursion; a default
# rule plus a plain reference gives the same result.
default bridge_url := "http://127.0.0.1:8016"

bridge_url := data.groqpolicy.config.bridge_url

# http.send's own timeout: how long OPA waits for the gateway.
default timeout := "2s"

timeout := data.groqpolicy.config.timeout

# The deadline the gateway is asked to respect; below the http.send timeout so that
# the gateway can still answer (with an error) before OPA gives up on it.
default deadline_ms := 1500

deadline_ms := data.groqpolicy.config.deadline_ms

# request is the http.send request for one question; exposed for tests and tooling.
request(policy, tier, question, context) := {
	"method": "POST",
	"url": concat("", [bridge_url, "/v1/infer/", tier]),
	"headers": {"content-type": "application/json"},
	"body": {
		"question": question,
		"context": context,
		"policy": policy,
		"constitutional_hash": constitutional_hash,
		"deadline_ms": deadline_ms,
	},
	"timeout": timeout,
	"cache": true,
	"raise_error": false,
	"force_json_decode": true,
}

# judge asks a tier a question on behalf of an unnamed caller.
judge(tier, question, context) := judge_for("", tier, question, context)

# judge_for asks a tier a question on behalf of the named policy.
judge_for(policy, tier, question, context) := normalise(tier, http.send(request(policy, tier, question, context))) if {
	tiers[tier]
} else := failure(tier, concat("", ["unknown tier \"", tier, "\" (want one of: auto, balanced, fast, nano, premium, reasoning)"]))

# confident holds when an answer is usable and at least min_confidence sure.
confident(answer, min_confidence) if {
	answer.ok
	answer.confidence >= min_confidence
}

# doubt explains why an answer cannot be relied on at min_confidence.
doubt(answer, min_confidence) := concat("", ["model unavailable: ", answer.reason]) if {
	not answer.ok
} else := concat("", [
	"model (", answer.tier, ", ", answer.model, ") answered ", answer.decision,
	" with confidence ", percent(answer.confidence), ", below the required ", percent(min_confidence),
]) if {
	answer.confidence < min_confidence
}

# summary is a one-line description of a confident answer, for a decision's reasons;
# for tier "auto" it ends with the bridge's reason for the tier it chose.
summary(answer) := concat("", [
	"model (", answer.tier, ", ", answer.model, ") judged ", answer.decision,
	" with confidence ", percent(answer.confidence), ": ", answer.rationale, _route_note(answer),
])

_route_note(answer) := concat("", [" [tier auto chose ", answer.route, "]"]) if {
	object.get(answer, "route", "") != ""
} else := ""

# percent renders a confidence in [0, 1] as a whole percentage ("87%") without sprintf.
percent(x) := concat("", [format_int(x * 100, 10), "%"])

normalise(tier, response) := answer if {
	response.status_code == 200
	body := response.body
	is_object(body)
	decisions[body.decision]
	is_number(body.confidence)
	body.confidence >= 0
	body.confidence <= 1
	answer := {
		"decision": body.decision,
		"confidence": body.confidence,
		"rationale": _string_or(body, "rationale", ""),
		"model": _string_or(body, "model", "unknown"),
		"tier": _answered_tier(tier, body),
		"ok": true,
		"reason": "",
		"emulated": object.get(body, "emulated", false) == true,
		"cached": object.get(body, "cached", false) == true,
		"route": _string_or(object.get(body, "route", {}), "reason", ""),
	}
} else := failure(tier, problem(response))

# For "auto" the tier is the one the bridge chose (its answer says which); otherwise the one asked.
_answered_tier(tier, body) := body.tier if {
	tier == "auto"
	tiers[body.tier]
	body.tier != "auto"
} else := tier

failure(tier, reason) := {
	"decision": "review",
	"confidence": 0,
	"rationale": "",
	"model": "",
	"tier": tier,
	"ok": false,
	"reason": reason,
	"emulated": false,
	"cached": false,
	"route": "",
}

# problem names what was wrong with a response that normalise rejected.
problem(response) := concat("", ["bridge unreachable: ", _error_message(response)]) if {
	object.get(response, "status_code", 0) == 0
} else := concat("", [
	"bridge answered HTTP ", format_int(response.status_code, 10), ": ",
	_error_message(object.get(response, "body", null)),
]) if {
	response.status_code != 200
} else := "bridge answer: body is not a JSON object" if {
	not is_object(object.get(response, "body", null))
} else := "bridge answer: missing decision" if {
	not response.body.decision
} else := concat("", [
	"bridge answer: decision ", json.marshal(response.body.decision),
	" is not one of allow, deny, review",
]) if {
	not decisions[response.body.decision]
} else := concat("", [
	"bridge answer: confidence ", json.marshal(object.get(response.body, "confidence", null)),
	" is not a number in [0, 1]",
])

# http.send puts transport errors in response.error; the gateway puts its own in body.error.
_error_message(x) := x.error.message if {
	is_string(x.error.message)
} else := x.error.code if {
	is_string(x.error.code)
} else := json.marshal(x.error) if {
	x.error
} else := "no error details"

_string_or(obj, key, fallback) := obj[key] if {
	is_string(obj[key])
} else := fallback
