"""Rego texts the control-plane tests store through `POST /api/v1/policies`."""

HEAD = "package p\n\nimport data.groqpolicy.lib.decision as doc\n\n"

# asks the model (lib.groq, http.send to the bridge) whether `input.text` is harmful: a confident
# deny is a deny reason (`d`), an unsure answer a review reason (`r`); the policies add `decision`
MODEL_JUDGMENT = HEAD + """import data.groqpolicy.lib.groq

answer := groq.judge_for("ethics", "fast", "Is this text harmful?", {"text": input.text})

d contains groq.summary(answer) if {
	groq.confident(answer, 0.7)
	answer.decision == "deny"
}

r contains groq.doubt(answer, 0.7) if not groq.confident(answer, 0.7)
"""

# a confident allow allows, with the model's confidence
MODEL_POLICY = MODEL_JUDGMENT + """
a contains groq.summary(answer) if {
	groq.confident(answer, 0.7)
	answer.decision == "allow"
}

decision := doc.document("ethics", d, r, a, answer.confidence, ["P7-safety-harm-avoidance"])
"""
