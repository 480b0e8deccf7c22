"""A corpus of hostile requests: bodies, headers and query values that a careless or malicious
client sends. Each case is named, so a failure says which one broke which route."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _deep(levels: int, opener: bytes = b"[", closer: bytes = b"]", inner: bytes = b"") -> bytes:
    return opener * levels + inner + closer * levels


_JSON = {"content-type": "application/json"}
_HASH = CONSTITUTIONAL_HASH.encode()
_DEEP_ARRAY = _deep(5000)
_DEEP_OBJECT = _deep(3000, b'{"a":', b"}", b"1")

BODIES: list[Case] = [
    # what the issue reported: nesting past the decoders' recursion
    Case("deep array", _DEEP_ARRAY, _JSON),
    Case("deep object", _DEEP_OBJECT, _JSON),
    Case("deep inside a valid envelope", b'{"input_context": ' + _DEEP_ARRAY + b', "constitutional_hash": "' + _HASH + b'"}', _JSON),
    Case("deep and unterminated", b"[" * 100_000, _JSON),
    Case("deep in a decision-log event", b'[{"decision_id": "d", "labels": ' + _DEEP_OBJECT + b"}]", _JSON),
    Case("deep status labels", b'{"labels": ' + _DEEP_ARRAY + b"}", _JSON),
    Case("brackets inside strings only", json.dumps({"x": "[" * 5000}).encode(), _JSON),
    # valid envelopes carrying what is hard to evaluate: depth just inside the limit, numbers past int64
    Case("at the nesting limit, evaluable", b'{"input_context": {"x": ' + _deep(120) + b'}, "policy_types": ["risk_management"], '
         b'"constitutional_hash": "' + _HASH + b'", "question": "q?", "contexts": [{"x": ' + _deep(100) + b"}]}", _JSON),
    Case("huge numbers, evaluable", b'{"input_context": {"amount": 1' + b"0" * 300 + b', "f": 1e308, "n": -1e-320}, '
         b'"policy_types": ["risk_management"], "constitutional_hash": "' + _HASH + b'", "question": "q?", '
         b'"context": {"n": 1' + b"0" * 30 + b'}, "contexts": [{"amount": 1' + b"0" * 40 + b"}]}", _JSON),
    # numbers
    Case("huge integer", b'{"limit": 1' + b"0" * 5000 + b"}", _JSON),
    Case("huge bare integer", b"9" * 5000, _JSON),
    Case("integer past int64", b'{"samples": 100000000000000000000000, "priority": -100000000000000000000}', _JSON),
    Case("float overflow", b'{"confidence": 1e999, "input_context": {"x": -1e999}}', _JSON),
    Case("NaN and Infinity", b'{"input_context": {"x": NaN, "y": Infinity}}', _JSON),
    # text
    Case("invalid UTF-8", b'{"name": "\xff\xfe\xfd", "input_context": {"t": "\xc3"}}', _JSON),
    Case("lone surrogate", b'{"name": "\\ud800", "question": "\\udfff"}', _JSON),
    Case("NUL bytes", b'{"name": "a\x00b"}', _JSON),
    Case("byte order mark", b"\xef\xbb\xbf{}", _JSON),
    # shapes
    Case("empty body", b"", _JSON),
    Case("not JSON", b"hello, world", _JSON),
    Case("truncated", b'{"input_context": {"a": [1, 2', _JSON),
    Case("top-level null", b"null", _JSON),
    Case("top-level array", b"[1, 2, 3]", _JSON),
    Case("top-level string", b'"just a string"', _JSON),
    Case("duplicate keys", b'{"constitutional_hash": "0", "constitutional_hash": "' + _HASH + b'", "name": 1, "name": 2}', _JSON),
    Case("wrong types", json.dumps({"policy_types": 5, "performance_tier": ["x"], "input_context": "s", "name": {},
                                    "opa_policy": 7, "contexts": "x", "question": [], "deadline_ms": "soon",
                                    "constitutional_hash": 1}).encode(), _JSON),
    Case("every field null", json.dumps({k: None for k in ("name", "policy_type", "opa_policy", "input_context",
                                                            "contexts", "question", "tier")}).encode(), _JSON),
    Case("big string", json.dumps({"x": "a" * (3 * 1024 * 1024)}).encode(), _JSON),
    Case("many keys", json.dumps({f"k{i}": i for i in range(20_000)}).encode(), _JSON),
    # content types and encodings
    Case("text/plain", b'{"a": 1}', {"content-type": "text/plain"}),
    Case("form", b"a=1&b=%ZZ", {"content-type": "application/x-www-form-urlencoded"}),
    Case("multipart without boundary", b"--x\r\n", {"content-type": "multipart/form-data"}),
    Case("garbage content type", b"{}", {"content-type": "%%%/;;;=="}),
    Case("gzip that is not", b"not gzip at all", {**_JSON, "content-encoding": "gzip"}),
    Case("gzip deep", gzip.compress(_DEEP_ARRAY), {**_JSON, "content-encoding": "gzip"}),
    Case("unknown encoding", b"{}", {**_JSON, "content-encoding": "br, zstd, x-unknown"}),
]

# Shapes that only `/logs` and `/status` ingestion can judge (the cases): a good envelope with
# a bad event. Kept apart, on a control plane of their own: if one were ever stored again, it would
# break the agents' read side for every case after it.
INGESTION: list[tuple[str, Case]] = [
    ("/status", Case("status labels not an object", b'{"labels": [1, 2]}', _JSON)),
    ("/status", Case("status bundles not objects", b'{"labels": {"id": "a"}, "bundles": [1]}', _JSON)),
    ("/logs", Case("log event labels not an object",
                   b'[{"decision_id": "d1", "labels": [1, 2], "path": "x", "timestamp": "2026-01-01T00:00:00Z"}]', _JSON)),
]

HEADERS: list[Case] = [
    Case("Prefer wait of 5000 digits", headers={"prefer": "modes=snapshot;wait=" + "9" * 5000}),
    Case("Prefer wait negative", headers={"prefer": "wait=-1"}),
    Case("Prefer wait float", headers={"prefer": "modes=snapshot,delta;wait=1e9"}),
    Case("If-None-Match star with wait", headers={"if-none-match": "*", "prefer": "wait=1"}),
    Case("huge If-None-Match", headers={"if-none-match": ",".join(f'"{i}"' for i in range(2000))}),
    Case("huge header value", headers={"x-filler": "a" * 60_000}),
    Case("non-ASCII header", headers={"x-filler": "caf\u00e9 \u00ff"}),
    Case("bearer garbage", headers={"authorization": "Bearer " + "\u00e9" * 300}),
    Case("hostile request id", headers={"x-request-id": "a\u00e9b" * 200}),
    Case("content-length garbage", headers={"accept": "*/*;q=abc, text/html;q=" + "9" * 5000}),
]

# values for every query parameter a route declares
QUERY_VALUES = ["-1", "9" * 5000, "abc", "1e999", "NaN", "", "\x00", "true" * 500, "[]", "%FF"]
# values for every path parameter
PATH_VALUES = ["00000000-0000-0000-0000-000000000000", "not-a-uuid", "a" * 2000, "..%2F..%2Fetc", "%00", "9" * 5000]
