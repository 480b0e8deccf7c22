"""Evaluate a prepared case through the project's evaluator and judge it as OPA's wasm runner does
(internal/wasm/sdk/test/e2e/external_test.go):

- `want_result`: no error, and the rows equal the expected rows as a set of binding objects; with
  `sort_bindings`, every array-valued binding of the actual rows is sorted first (the expected side
  is taken as written). Values compare as Rego values (1 == 1.0).
- an expected error with `strict_error`: opa.wasm has no strict mode, so no error and no row.
- any other expected error: an error; only `eval_conflict_error` can match, by its message.

Cases with `strict_error` are also evaluated in strict mode (`strict_builtin_errors=True`), where
topdown's own runner wants an error whose message contains `want_error`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from bridge.opawasm import errors as wasm_errors
from bridge.opawasm.policy import WasmPolicy
from bridge.opawasm.values import canonical_key, sort_key
from tests.opa_conformance.build import Prepared, jsonable
from tests.opa_conformance.regotext import input_value_text

_CONFLICTS = ("var assignment conflict", "object insert conflict")
_LOCATION = re.compile(r"^[^\s:]+\.rego:\d+: ")
_CODE = re.compile(r"^(eval_[a-z_]+|rego_[a-z_]+): ")


@dataclass
class Outcome:
    name: str
    status: str  # pass | fail | skip
    kind: str = ""  # for a failure: wrong_result, unexpected_error, missing_builtin: <names>, ...
    detail: str = ""
    strict: dict[str, Any] = field(default_factory=dict)  # strict mode, for strict_error cases
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "kind": self.kind, "detail": self.detail[:600],
                "strict": self.strict, "seconds": round(self.seconds, 4)}


class EvaluatorBug(Exception):
    """The evaluator raised something other than a WasmError: its contract is broken."""


def input_bytes(p: Prepared) -> bytes | None:
    c = p.case
    if c.input_term is not None:
        return input_value_text(c.input_term)
    if c.input is not None:  # `input: null` is no input, as Go's nil *any
        return msgspec.json.encode(jsonable(c.input))
    return None


Rows = list[dict[str, Any]]


def run(policy: WasmPolicy, p: Prepared, timeout: float) -> tuple[Rows | None, Exception | None]:
    """The rows of the case's entrypoint, or the evaluation's error."""
    try:
        raw = policy.evaluate_raw(p.entrypoint, input_bytes(p), timeout=timeout)
    except wasm_errors.WasmError as exc:
        return None, exc
    except Exception as exc:  # noqa: BLE001 - judged as what it is: an evaluator bug
        return None, EvaluatorBug(f"{type(exc).__name__}: {exc}")
    result_set = msgspec.json.decode(raw)
    rows: Rows = result_set[0]["result"] if result_set else []
    return rows, None


def _rows_key(rows: Rows, sort_bindings: bool) -> set[bytes]:
    def binding(v: Any) -> Any:
        return sorted(v, key=sort_key) if sort_bindings and isinstance(v, list) else v

    return {canonical_key({k: binding(v) for k, v in r.items()}) for r in rows}


def judge(p: Prepared, rows: Rows | None, err: Exception | None) -> tuple[str, str, str]:
    """(status, failure kind, detail) by OPA's wasm runner's rules."""
    c = p.case
    if isinstance(err, wasm_errors.DeadlineExceeded):
        return "fail", "timeout", str(err)
    if isinstance(err, EvaluatorBug):
        return "fail", "evaluator_exception", str(err)
    if c.want_result is not None:
        if err is not None:
            return "fail", "unexpected_error", f"{type(err).__name__}: {err}"
        want = {canonical_key(jsonable(r)) for r in c.want_result}
        if want == _rows_key(rows or [], c.sort_bindings):
            return "pass", "", ""
        return "fail", "wrong_result", f"want {jsonable(c.want_result)!r:.300} got {rows!r:.300}"
    if not c.expects_error:
        return "fail", "no_expectation", ""
    if c.strict_error:
        if err is not None:
            return "fail", "unexpected_error", f"{type(err).__name__}: {err}"
        return ("fail", "wrong_result", f"want no rows, got {rows!r:.300}") if rows else ("pass", "", "")
    if err is None:
        return "fail", "no_error", f"want {c.want_error_code}, got {rows!r:.300}"
    if c.want_error_code == "eval_conflict_error" and any(m in str(err) for m in _CONFLICTS):
        return "pass", "", ""
    return "fail", "wrong_error", f"want {c.want_error_code}: {type(err).__name__}: {err}"


def wanted_message(want: str) -> str:
    """topdown's err.Error() is `<file>:<row>: <code>: <message>`; a few want_errors quote the
    location and code too, which no wasm host can know: the message part is compared."""
    return _CODE.sub("", _LOCATION.sub("", want))


def strict_judgement(p: Prepared, rows: Rows | None, err: Exception | None) -> dict[str, Any]:
    """A strict_error case in strict mode: the result still holds where one is expected; otherwise
    does the evaluation fail, and does its message contain topdown's?"""
    c = p.case
    if c.want_result is not None:
        status, _kind, detail = judge(p, rows, err)
        return {"expect": "result", "ok": status == "pass", "got": detail}
    want = None if c.want_error is None else wanted_message(c.want_error)
    if err is None:
        return {"expect": "error", "errored": False, "want": want, "ok": False, "got": f"rows {rows!r:.200}"}
    message = str(err)
    return {"expect": "error", "errored": True, "want": want, "got": f"{type(err).__name__}: {message[:300]}",
            "ok": want is None or want in message}
