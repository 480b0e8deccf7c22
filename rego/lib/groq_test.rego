package groqpolicy.lib.groq_test

import data.groqpolicy.lib.groq

answer_body := {
	"decision": "allow",
	"confidence": 0.92,
	"rationale": "benign",
	"model": "openai/gpt-oss-20b",
	"tier": "fast",
	"cached": false,
	"emulated": true,
	"usage": {},
	"latency_ms": 140,
}

ok_send(_) := {"status_code": 200, "body": answer_body}

# Records the request it was given, so tests can check what the helper sends.
echo_send(req) := {"status_code": 200, "body": object.union(answer_body, {"rationale": json.marshal(req)})}

transport_error_send(_) := {"status_code": 0, "error": {"code": "eval_http_send_network_error", "message": "connection refused"}}

unavailable_send(_) := {"status_code": 503, "body": {"error": {"message": "no inference worker", "type": "unavailable", "code": "no_responders"}}}

html_send(_) := {"status_code": 502, "raw_body": "<html>bad gateway</html>"}

string_body_send(_) := {"status_code": 200, "body": "allow"}

no_decision_send(_) := {"status_code": 200, "body": {"confidence": 0.9}}

bad_decision_send(_) := {"status_code": 200, "body": {"decision": "maybe", "confidence": 0.9}}

high_confidence_send(_) := {"status_code": 200, "body": {"decision": "deny", "confidence": 1.5}}

string_confidence_send(_) := {"status_code": 200, "body": {"decision": "deny", "confidence": "0.9"}}

no_confidence_send(_) := {"status_code": 200, "body": {"decision": "allow"}}

test_success_is_normalised if {
	a := groq.judge("fast", "is it fine?", {}) with http.send as ok_send
	a == {
		"decision": "allow", "confidence": 0.92, "rationale": "benign",
		"model": "openai/gpt-oss-20b", "tier": "fast", "ok": true, "reason": "",
		"emulated": true, "cached": false, "route": "",
	}
}

auto_send(_) := {"status_code": 200, "body": object.union(answer_body, {
	"tier": "balanced",
	"route": {"tier": "balanced", "models": ["qwen/qwen3.6-27b"], "reason": "balanced: the fastest tier that fits"},
})}

test_auto_is_accepted_and_names_the_chosen_tier_and_why if {
	a := groq.judge("auto", "long question?", {}) with http.send as auto_send
	a.ok == true
	a.tier == "balanced"
	a.route == "balanced: the fastest tier that fits"
	endswith(groq.summary(a), "benign [tier auto chose balanced: the fastest tier that fits]")
}

test_auto_request_goes_to_the_auto_route if {
	a := groq.judge("auto", "q?", {}) with http.send as echo_send
	req := json.unmarshal(a.rationale)
	req.url == "http://127.0.0.1:8016/v1/infer/auto"
}

test_auto_failure_is_review if {
	a := groq.judge("auto", "q?", {}) with http.send as unavailable_send
	a.decision == "review"
	a.ok == false
	a.tier == "auto"
}

test_request_shape if {
	a := groq.judge_for("data_governance", "balanced", "q?", {"k": "v"}) with http.send as echo_send
	req := json.unmarshal(a.rationale)
	req.method == "POST"
	req.url == "http://127.0.0.1:8016/v1/infer/balanced"
	req.body == {
		"question": "q?", "context": {"k": "v"}, "policy": "data_governance",
		"constitutional_hash": "cdd01ef066bc6cf2", "deadline_ms": 1500,
	}
	req.timeout == "2s"
	req.cache == true
	req.raise_error == false
	req.force_json_decode == true
}

test_config_overrides_url_timeout_deadline if {
	a := groq.judge("nano", "q?", {}) with http.send as echo_send
		with data.groqpolicy.config as {"bridge_url": "http://bridge:9000", "timeout": "500ms", "deadline_ms": 300}
	req := json.unmarshal(a.rationale)
	req.url == "http://bridge:9000/v1/infer/nano"
	req.timeout == "500ms"
	req.body.deadline_ms == 300
	req.body.policy == ""
}

test_transport_error_is_review if {
	a := groq.judge("fast", "q?", {}) with http.send as transport_error_send
	a.decision == "review"
	a.ok == false
	a.confidence == 0
	a.reason == "bridge unreachable: connection refused"
}

test_gateway_error_is_review if {
	a := groq.judge("fast", "q?", {}) with http.send as unavailable_send
	a.decision == "review"
	not a.ok
	a.reason == "bridge answered HTTP 503: no inference worker"
}

code_only_send(_) := {"status_code": 500, "body": {"error": {"code": "internal"}}}

odd_error_send(_) := {"status_code": 400, "body": {"error": {"detail": 1}}}

test_error_code_or_object_is_reported if {
	a := groq.judge("fast", "q?", {}) with http.send as code_only_send
	a.reason == "bridge answered HTTP 500: internal"
	b := groq.judge("fast", "q?", {}) with http.send as odd_error_send
	b.reason == `bridge answered HTTP 400: {"detail":1}`
}

test_non_json_error_is_review if {
	a := groq.judge("fast", "q?", {}) with http.send as html_send
	a.decision == "review"
	a.reason == "bridge answered HTTP 502: no error details"
}

test_non_object_body_is_review if {
	a := groq.judge("fast", "q?", {}) with http.send as string_body_send
	a.decision == "review"
	a.reason == "bridge answer: body is not a JSON object"
}

test_missing_decision_is_review if {
	a := groq.judge("fast", "q?", {}) with http.send as no_decision_send
	a.decision == "review"
	a.reason == "bridge answer: missing decision"
}

test_unknown_decision_is_review if {
	a := groq.judge("fast", "q?", {}) with http.send as bad_decision_send
	a.decision == "review"
	a.reason == `bridge answer: decision "maybe" is not one of allow, deny, review`
}

test_confidence_out_of_range_is_review if {
	a := groq.judge("fast", "q?", {}) with http.send as high_confidence_send
	a.decision == "review"
	a.reason == "bridge answer: confidence 1.5 is not a number in [0, 1]"
}

test_confidence_not_a_number_is_review if {
	a := groq.judge("fast", "q?", {}) with http.send as string_confidence_send
	a.decision == "review"
	a.reason == `bridge answer: confidence "0.9" is not a number in [0, 1]`
}

test_missing_confidence_is_review if {
	a := groq.judge("fast", "q?", {}) with http.send as no_confidence_send
	a.decision == "review"
	a.reason == "bridge answer: confidence null is not a number in [0, 1]"
}

test_unknown_tier_is_review_without_a_call if {
	# http.send is mocked to succeed: the tier check must not even get there.
	a := groq.judge("turbo", "q?", {}) with http.send as ok_send
	a.decision == "review"
	a.ok == false
	a.reason == `unknown tier "turbo" (want one of: auto, balanced, fast, nano, premium, reasoning)`
}

test_every_tier_is_known if {
	every tier in ["nano", "fast", "balanced", "premium", "reasoning"] {
		a := groq.judge(tier, "q?", {}) with http.send as ok_send
		a.ok
		a.tier == tier
	}
}

test_confident_and_doubt if {
	good := groq.judge("fast", "q?", {}) with http.send as ok_send
	groq.confident(good, 0.9)
	not groq.confident(good, 0.95)
	groq.doubt(good, 0.95) == "model (fast, openai/gpt-oss-20b) answered allow with confidence 92%, below the required 95%"
	bad := groq.judge("fast", "q?", {}) with http.send as transport_error_send
	not groq.confident(bad, 0)
	groq.doubt(bad, 0.5) == "model unavailable: bridge unreachable: connection refused"
	groq.summary(good) == "model (fast, openai/gpt-oss-20b) judged allow with confidence 92%: benign"
}

bare_send(_) := {"status_code": 200, "body": {"decision": "deny", "confidence": 0}}

test_minimal_answer_gets_defaults if {
	a := groq.judge("reasoning", "q?", {}) with http.send as bare_send
	a.ok
	a.decision == "deny"
	a.confidence == 0
	a.rationale == ""
	a.model == "unknown"
	a.emulated == false
}
