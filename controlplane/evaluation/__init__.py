"""Evaluation: `/api/v1/evaluate`, `/api/v1/evaluate/batch`, `/api/v1/groq/*`, `/api/v1/opa/evaluate`,
and `policy.evaluate` on NATS with the same request and response.

- `pipeline`: the orchestrator of an evaluation's stages, over
  `decision` (the pure rules: what a policy's answer means, synthesis, the response),
  `constitution` (the memoised pre- and post-validation), `scheduling` (batched WASM calls, chunks
  over two threads, the blocking slots) and `model_stage` (policies that wait on a model).
- `interfaces`: what the pipeline is built with (evaluator, model client, recorder, escalation sink).
- `runtime`: the evaluator and its hot-swap follower, the inference client, and what the composition
  root (`controlplane.services`) hands the handlers.
- `schemas`, `controllers`, `nats_service`: the wire shapes and the two edges (HTTP, NATS).
"""
