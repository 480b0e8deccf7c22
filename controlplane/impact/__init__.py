"""What would change: the replay store, impact analysis and shadow mode.

`store` (the JetStream stream of decisions' inputs and the model's judgments), `tap` (where live
traffic is seen: the decision recorder and the model transports), `candidate` (a change compiled
and signed, never served), `replay` (recorded decisions decided again by a candidate, and the
report), `service` (impact analysis), `shadow` (a candidate beside a live policy on sampled
traffic; promote and discard), `controllers` (`/api/v1/impact`, `/api/v1/shadows`).
"""
