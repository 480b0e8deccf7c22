"""Policy certification: a policy revision becomes active only with a signed certificate.

- `certify.rego`: the deterministic checks, in Rego, evaluated by the real `opa` over the policy as
  it ships, the library and the constitution (principles, decision documents, fail closed, tests).
- `checks`: runs `opa test` (the policy's own tests) and `opa eval` of those checks, once per write.
- `review`: the optional model review at the `premium` or `reasoning` tier, through the inference
  workers, read as a structured verdict with findings.
- `certificate`: the certificate (checks, verdict, override, revision, digest of the policy text),
  signed with the control plane's record key (Ed25519), and its verification.
- `certifier`: the one entry point the policy service calls: checks, review, refusal or certificate.
"""
