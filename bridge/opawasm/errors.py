"""Errors of the in-process WASM evaluator; all subclass `WasmError` (a `GroqPolicyError`).

An evaluation that fails raises an `EvaluationError`, so a caller that denies on it never lets a
failure through as a decision. The one that ran out of time is also the family's
`DeadlineExceeded` (504, "timeout_error"): the concept lives in `bridge.kernel.errors`; the
engine's class only joins it to `EvaluationError`. The engine does not raise the kernel's class
itself for two reasons: it would no longer be an `EvaluationError`, and `http.send` must tell the
evaluation's own deadline (which halts it, as topdown's cancelled context does) from a transport's
`DeadlineExceeded` (the NATS request timed out: a builtin error, like any network error).
"""

from __future__ import annotations

from bridge.kernel import errors as kernel
from bridge.kernel.errors import GroqPolicyError

__all__ = [
    "BuiltinError",
    "BuiltinHalt",
    "BundleLoadError",
    "BundleVerificationFailed",
    "DeadlineExceeded",
    "EvaluationError",
    "HaltError",
    "InlineBudgetExceeded",
    "InvalidInput",
    "MissingBuiltinsError",
    "OutOfMemory",
    "PolicyAbort",
    "PoolClosed",
    "PoolExhausted",
    "UnknownEntrypointError",
    "UnsupportedABIError",
    "WasmError",
    "WasmTrap",
]


class WasmError(GroqPolicyError):
    """Base for every error the evaluator raises on purpose."""

    status = 500


class BundleLoadError(WasmError):
    """A bundle cannot be loaded: bad archive, failed verification, bad manifest, bad module."""

    status = 422


class BundleVerificationFailed(BundleLoadError):
    """The bundle is unsigned, tampered with, or signed by a key we do not trust."""


class UnsupportedABIError(BundleLoadError):
    """The module was compiled for an ABI this evaluator does not drive (needs 1.2+)."""


class MissingBuiltinsError(BundleLoadError):
    """The module needs host builtins this evaluator does not provide."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = sorted(missing)
        super().__init__(f"policy.wasm: missing builtins (not provided by the host): {', '.join(self.missing)}")


class UnknownEntrypointError(WasmError):
    """The policy has no such entrypoint (not compiled into this revision)."""

    status = 404


class EvaluationError(WasmError):
    """An evaluation failed; the caller must treat the decision as failed (never as allow)."""


class InvalidInput(EvaluationError):
    """The caller's input is not a JSON value: the caller's mistake, and still a failed evaluation."""

    status = 400


class PolicyAbort(EvaluationError):
    """The policy aborted (opa_abort): a runtime error such as conflicting rule values."""


class BuiltinHalt(EvaluationError):
    """A builtin raised an error that halts evaluation (OPA's topdown.Halt), e.g. http.send timeout."""


class WasmTrap(EvaluationError):
    """The guest trapped (out-of-bounds access, unreachable, stack overflow...)."""


class DeadlineExceeded(kernel.DeadlineExceeded, EvaluationError):
    """The evaluation ran past its deadline: an `EvaluationError` that is the family's
    `DeadlineExceeded`. The kernel's class comes first, so its status (504), type and code win
    over `WasmError`'s."""


class InlineBudgetExceeded(EvaluationError):
    """An inline evaluation (`inline=True`) did not fit the inline budget, or found no idle instance.

    Not a verdict on the policy: the caller runs it again off its thread with the full deadline. It
    is still an `EvaluationError`, so a caller that forgets to do so fails closed."""

    status = 503


class OutOfMemory(EvaluationError):
    """The policy needed more linear memory than its cap."""

    status = 507


class PoolClosed(WasmError):
    """The revision was swapped out (or the evaluator closed) before an instance was acquired."""

    status = 503


class PoolExhausted(WasmError):
    """Every instance stayed busy for the whole acquire timeout."""

    status = 503


class BuiltinError(Exception):
    """Raised by a host builtin for a non-halting error: the call becomes undefined, as in topdown."""


class HaltError(Exception):
    """Raised by a host builtin for a halting error: evaluation fails with this message."""
