"""In-process OPA-WASM evaluator on wasmtime.

The control plane holds one `WasmEvaluator` per wasm bundle and swaps revisions atomically:

    from bridge.opawasm import HostConfig, LoadOptions, WasmEvaluator, UNDEFINED
    from bridge.opabundle.keys import load_verification_key

    ev = WasmEvaluator({kid: verification_key}, LoadOptions(host=HostConfig(
        bridge_url="http://127.0.0.1:8016",        # http.send to {bridge_url}/v1/infer/<tier> ...
        infer_transport=infer_client.transport(),  # ... goes straight to NATS groq.infer.<tier>
    ), pool_size=16))                              # or the same fields as keywords
    ev.load(signed_bundle_tar_gz)                  # verify, compile, check ABI/builtins; then publish
    decision = ev.evaluate("policies/decision", {"user": "alice"})        # threads
    decision = await ev.evaluate_async("policies/decision", {"user": "alice"})  # asyncio
    raw = ev.evaluate_raw("policies/decision", b'{"user":"alice"}')  # b'[{"result":...}]' / b'[]'

`evaluate` returns the entrypoint's value or `UNDEFINED`; every failure is an `EvaluationError`
(`PolicyAbort`, `BuiltinHalt`, `WasmTrap`, `DeadlineExceeded`, `OutOfMemory`), never a decision.
Load failures are `BundleLoadError`s (`BundleVerificationFailed`, `UnsupportedABIError`,
`MissingBuiltinsError`); the previous revision keeps serving. `WasmPolicy` is one revision without
bundle handling (`policy_from_files` for already-verified files).
"""

from bridge.opawasm.bundle import load_bundle, policy_from_files
from bridge.opawasm.errors import *  # noqa: F403 - the error family is part of the API
from bridge.opawasm.evaluator import WasmEvaluator
from bridge.opawasm.host import HostConfig, InferTransport, SendMemo
from bridge.opawasm.options import LoadOptions
from bridge.opawasm.policy import WasmPolicy
from bridge.opawasm.values import UNDEFINED

__all__ = [
    "UNDEFINED",
    "HostConfig",
    "InferTransport",
    "LoadOptions",
    "SendMemo",
    "WasmEvaluator",
    "WasmPolicy",
    "load_bundle",
    "policy_from_files",
]
