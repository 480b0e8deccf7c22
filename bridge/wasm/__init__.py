"""In-process OPA-WASM evaluator on wasmtime (issue 3)."""

from bridge.wasm.builtins import UNDEFINED
from bridge.wasm.errors import *  # noqa: F403
from bridge.wasm.host import HostConfig
from bridge.wasm.policy import WasmPolicy
from bridge.wasm.bundle import WasmEvaluator, load_bundle, policy_from_files

__all__ = [
    "UNDEFINED", "HostConfig", "WasmPolicy", "WasmEvaluator", "load_bundle", "policy_from_files",
]
