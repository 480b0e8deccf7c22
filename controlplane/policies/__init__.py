"""Stored policies: `/api/v1/policies`, the JetStream policy store, and how stored Rego becomes
part of the signed `groqpolicy` bundle.

- `schemas`: the API's request/response shapes and the stored `PolicyRecord` (msgspec).
- `rego`: a stored policy's package becomes `groqpolicy.rules.p_<rule id hex>` (rows kept), plus an
  appended `entrypoint: true` rule; agents serve `/v1/data/groqpolicy/rules/p_<hex>/decision`.
- `store`: KV bucket `groqpolicy_policies` (one key per policy, history 64 = versions) and object
  store `groqpolicy_artifacts` (compiled modules, signed revision archives); a KV watch keeps every
  replica's view current and is rebuilt on reconnect.
- `bundler`: library + active stored policies -> one `groqpolicy` revision (rego for agents, wasm for
  the in-process evaluator), compiled with the real `opa`, signed, activated.
- `service`: compile -> store -> activate for writes, `reconcile` for other replicas' writes,
  standalone compile + measurement for `/compile`; started and stopped with the app.
"""
