# METADATA
# title: Decision documents
# description: |
#   Builds the decision document every groqpolicy entrypoint returns. Deny overrides
#   review overrides allow. Reasons carry their weight as a prefix ("deny: ", "review: ")
#   so that a consumer (and the constitution's post-validation) can tell a reason that
#   blocks from one that only explains.
package groqpolicy.lib.decision

# Spelled out here as well as in the constitution's data so that a decision document
# stays correct even when a bundle ships the library without its data;
# constitution_test checks that the two agree.
constitutional_hash := "cdd01ef066bc6cf2"

outcome_values := {"allow", "deny", "review"}

# strictness orders the outcomes: deny overrides review overrides allow.
strictness := {"allow": 0, "review": 1, "deny": 2}

# strictest(a, b) is the stricter of two outcomes; anything unknown counts as deny.
strictest(a, b) := "deny" if {
	not outcome_values[a]
} else := "deny" if {
	not outcome_values[b]
} else := a if {
	strictness[a] >= strictness[b]
} else := b

# outcome is the decision implied by the sets of deny and review reasons.
outcome(denies, reviews) := "deny" if {
	count(denies) > 0
} else := "review" if {
	count(reviews) > 0
} else := "allow"

# reasons lists the deny reasons first, then the review reasons, each with its prefix;
# an allow lists its own (unprefixed) reasons, or a generic one.
reasons(denies, reviews, allows) := array.concat(
	[concat("", ["deny: ", r]) | some r in sort(denies)],
	[concat("", ["review: ", r]) | some r in sort(reviews)],
) if {
	count(denies) + count(reviews) > 0
} else := sort(allows) if {
	count(allows) > 0
} else := ["all checks passed"]

# document is the decision document of one policy evaluation.
document(policy, denies, reviews, allows, confidence, principles) := {
	"decision": outcome(denies, reviews),
	"reasons": reasons(denies, reviews, allows),
	"confidence": confidence,
	"policy": policy,
	"constitutional_hash": constitutional_hash,
	"principles": principles,
}
