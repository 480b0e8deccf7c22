"""Evaluation (issue 5): `/api/v1/evaluate`, `/api/v1/evaluate/batch`, `/api/v1/groq/*`,
`/api/v1/opa/evaluate`, and `policy.evaluate` on NATS with the same request and response.

- `pipeline`: select, constitutional pre-validation, WASM evaluation (model calls over NATS), the
  model stage, synthesis, post-validation, timings; hands each record to the audit sink.
- `schemas`, `controllers`, `nats_service`: the wire shapes and the two edges (HTTP, NATS).
"""
