# METADATA
# title: Data governance
# description: |
#   Purpose limitation, data minimisation, consent and retention for a request to
#   process a set of fields for a declared purpose. Structured fields are checked by
#   rules; free text that no rule can classify is sent to the model ("does this hold
#   personal data?"), whose answer counts only at min_model_confidence or above.
#
#   Fields the catalog does not classify go to a data steward (review).
#
#   input: {principal, purpose, fields: [..], consent: [purposes], record_age_days,
#           free_text?}
package groqpolicy.policies.data_governance

import data.groqpolicy.lib.decision as doc
import data.groqpolicy.lib.groq

principles := [
	"P2-fail-closed",
	"P4-privacy-data-minimisation",
	"P8-lawful-processing",
]

model_tier := "fast"

min_model_confidence := 0.8

personal_fields := {
	"full_name", "email", "phone", "address", "date_of_birth", "national_id",
	"ip_address", "device_id", "location",
}

# GDPR Art. 9 special categories: never without explicit consent for the purpose.
special_category_fields := {
	"health_record", "biometric", "genetic", "ethnicity", "religion",
	"political_opinion", "sexual_orientation", "trade_union",
}

# What each purpose may use, whether it needs the subject's consent, and how long
# (in days) records may be kept for it.
purposes := {
	"billing": {"fields": {"full_name", "email", "address"}, "consent": false, "retention_days": 3650},
	"support": {"fields": {"full_name", "email", "phone"}, "consent": false, "retention_days": 730},
	"fraud_prevention": {"fields": {"full_name", "email", "ip_address", "device_id", "location"}, "consent": false, "retention_days": 1825},
	"marketing": {"fields": {"email", "full_name"}, "consent": true, "retention_days": 365},
	"analytics": {"fields": set(), "consent": false, "retention_days": 395},
	"research": {"fields": {"date_of_birth", "location", "health_record"}, "consent": true, "retention_days": 1825},
}

# Fields the data catalog classifies as not personal; anything in none of the three
# sets is unclassified and goes to a data steward.
non_personal_fields := {
	"order_id", "product_id", "amount", "currency", "country", "timestamp",
	"page_views", "session_count", "plan", "invoice_id",
}

_purpose := purposes[input.purpose]

_fields := {f | some f in input.fields}

_consented if input.purpose in input.consent

# ---------------------------------------------------------------- rules

rule_deny_reasons contains msg if {
	not _purpose
	msg := concat("", ["purpose ", json.marshal(object.get(input, "purpose", null)), " is not a registered processing purpose"])
}

rule_deny_reasons contains msg if {
	some f in _fields
	personal_fields[f]
	not _purpose.fields[f]
	_purpose
	msg := concat("", ["field ", f, " is personal data not needed for purpose ", input.purpose, " (data minimisation)"])
}

rule_deny_reasons contains msg if {
	some f in _fields
	special_category_fields[f]
	not _special_allowed(f)
	msg := concat("", ["field ", f, " is special-category data and needs explicit consent for this purpose"])
}

rule_deny_reasons contains msg if {
	_purpose.consent
	not _consented
	count(_fields & (personal_fields | special_category_fields)) > 0
	msg := concat("", ["purpose ", input.purpose, " needs the data subject's consent, which is not recorded"])
}

rule_deny_reasons contains msg if {
	input.record_age_days > _purpose.retention_days
	msg := concat("", [
		"records are ", format_int(input.record_age_days, 10), " days old, past the ",
		format_int(_purpose.retention_days, 10), "-day retention for ", input.purpose,
	])
}

review_reasons contains msg if {
	some f in _fields
	not personal_fields[f]
	not special_category_fields[f]
	not non_personal_fields[f]
	msg := concat("", ["field ", json.marshal(f), " is not classified in the data catalog"])
}

_special_allowed(f) if {
	_purpose.fields[f]
	_consented
}

# Free text must not carry personal data: what a purpose needs goes in declared fields,
# where the rules above can check it. Obvious personal data in free text needs no model: an e-mail address or a long digit
# run (phone, card or ID number).
_free_text_pii_pattern := `[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}|\+?[0-9][0-9 ()-]{8,}[0-9]`

_has_free_text if {
	is_string(input.free_text)
	trim_space(input.free_text) != ""
}

rule_deny_reasons contains "free text contains an e-mail address or an identifying number" if {
	_has_free_text
	regex.match(_free_text_pii_pattern, input.free_text)
}

# ---------------------------------------------------------------- model

# The model is asked only when the rules found nothing to deny and the free text did
# not match an obvious pattern: the inconclusive case.
needs_model if {
	count(rule_deny_reasons) == 0
	_has_free_text
	not regex.match(_free_text_pii_pattern, input.free_text)
}

model_answer := groq.judge_for(
	"data_governance",
	model_tier,
	concat("", [
		"Does the following free text contain personal data about an identifiable person ",
		"(name, contact details, identifiers, health, location)? Answer deny if it does, ",
		"allow if it does not, review if you cannot tell.",
	]),
	{"free_text": input.free_text, "purpose": input.purpose},
) if needs_model

model_deny_reasons contains concat("", ["free text holds personal data: ", groq.summary(model_answer)]) if {
	groq.confident(model_answer, min_model_confidence)
	model_answer.decision == "deny"
}

review_reasons contains groq.doubt(model_answer, min_model_confidence) if {
	needs_model
	not groq.confident(model_answer, min_model_confidence)
}

review_reasons contains groq.summary(model_answer) if {
	groq.confident(model_answer, min_model_confidence)
	model_answer.decision == "review"
}

allow_reasons contains groq.summary(model_answer) if {
	groq.confident(model_answer, min_model_confidence)
	model_answer.decision == "allow"
}

allow_reasons contains msg if {
	_purpose
	msg := concat("", ["fields are within purpose ", input.purpose, " and retention"])
}

deny_reasons := rule_deny_reasons | model_deny_reasons

# Rules are certain; a decision the model took part in is as sure as the model.
confidence := model_answer.confidence if needs_model

else := 1

# METADATA
# title: Data governance decision
# description: Purpose limitation, minimisation, consent and retention, with a model check on unclassified free text.
# entrypoint: true
# custom:
#   policy_type: data_governance
#   performance_tier: fast
#   uses_model: true
decision := doc.document("data_governance", deny_reasons, review_reasons, allow_reasons, confidence, principles)
