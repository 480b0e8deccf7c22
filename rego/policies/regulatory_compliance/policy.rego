# METADATA
# title: Regulatory compliance (GDPR)
# description: |
#   GDPR checks for processing personal data of a data subject: a valid legal basis
#   (Art. 6), explicit consent for special categories (Art. 9), transfers outside the
#   EEA only to adequate countries or under a transfer mechanism (Chapter V), and human
#   review for automated decisions with legal effect (Art. 22). Pure rules.
#
#   input: {principal, data_subject: {region}, processing: {legal_basis, special_category?,
#           destination_country, transfer_mechanism?, recipient_dpf_certified?,
#           automated_decision?, legal_effect?, human_review?}}
package groqpolicy.policies.regulatory_compliance

import data.groqpolicy.lib.decision as doc

principles := [
	"P1-human-oversight",
	"P4-privacy-data-minimisation",
	"P8-lawful-processing",
]

# EU member states plus Iceland, Liechtenstein and Norway (ISO 3166-1 alpha-2).
eea := {
	"AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
	"IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
	"IS", "LI", "NO",
}

# Countries with an EU adequacy decision. The US one (Data Privacy Framework) covers
# certified recipients only, so US is handled separately.
adequate := {"AD", "AR", "CA", "FO", "GG", "IL", "IM", "JP", "JE", "NZ", "KR", "CH", "GB", "UY"}

legal_bases := {"consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interests"}

transfer_mechanisms := {"scc", "bcr"}

_processing := object.get(input, "processing", {})

_gdpr_applies if eea[input.data_subject.region]

_gdpr_applies if input.data_subject.region == "EU"

_destination := object.get(_processing, "destination_country", "")

_transfer_out if {
	_gdpr_applies
	_destination != ""
	not eea[_destination]
}

_adequate_destination if adequate[_destination]

# Negated conditions on input go through helper rules: without `future.keywords.not`,
# `not f(input.x.y)` is false (not true) when input.x.y is missing, because the
# compiler evaluates input.x.y before the negation.
_legal_basis_valid if legal_bases[_processing.legal_basis]

_mechanism_valid if transfer_mechanisms[_processing.transfer_mechanism]

_region_known if is_string(input.data_subject.region)

_adequate_destination if {
	_destination == "US"
	_processing.recipient_dpf_certified == true
}

deny_reasons contains msg if {
	_gdpr_applies
	not _legal_basis_valid
	msg := concat("", [
		"GDPR Art. 6: legal basis ", json.marshal(object.get(_processing, "legal_basis", null)),
		" is not one of ", concat(", ", sort(legal_bases)),
	])
}

deny_reasons contains "GDPR Art. 9: special-category data needs explicit consent" if {
	_gdpr_applies
	_processing.special_category == true
	not _processing.explicit_consent == true
}

deny_reasons contains msg if {
	_transfer_out
	not _adequate_destination
	not _mechanism_valid
	not _processing.transfer_mechanism == "derogation"
	msg := concat("", [
		"GDPR Chapter V: transfer to ", _destination,
		" has no adequacy decision and no SCC or BCR",
	])
}

review_reasons contains msg if {
	_transfer_out
	not _adequate_destination
	_processing.transfer_mechanism == "derogation"
	msg := concat("", ["GDPR Art. 49: transfer to ", _destination, " relies on a derogation, which must be assessed case by case"])
}

review_reasons contains "GDPR Art. 22: automated decision with legal effect needs human review" if {
	_gdpr_applies
	_processing.automated_decision == true
	_processing.legal_effect == true
	not _processing.human_review == true
}

review_reasons contains "data subject region is unknown, so the applicable law cannot be determined" if {
	not _region_known
}

allow_reasons contains "GDPR does not apply to this data subject" if {
	_region_known
	not _gdpr_applies
}

allow_reasons contains "GDPR: legal basis, special categories, transfer and Art. 22 checks passed" if _gdpr_applies

# METADATA
# title: Regulatory compliance decision
# description: GDPR legal basis, special categories, international transfers and automated decisions.
# entrypoint: true
# custom:
#   policy_type: regulatory_compliance
#   performance_tier: nano
#   uses_model: false
decision := doc.document("regulatory_compliance", deny_reasons, review_reasons, allow_reasons, 1, principles)
