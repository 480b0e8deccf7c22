"""OPA's bundle file digests, reproduced exactly (v1/bundle/hash.go, verify.go, bundle.go).

What OPA hashes, and how:
- Every file of the bundle except the signatures file itself, i.e. any file whose *basename* is
  `.signatures.json` (OPA picks it up in any directory, so we exclude it in any directory too).
- Only three basenames are "structured" and hashed over a canonical JSON encoding: `data.json`,
  `.manifest` and `data.yaml`/`data.yml` (`IsStructuredDoc`). Every other file, *including other
  `.json` files* and `.manifest.pb`, is hashed over its raw bytes.
- The canonical encoding is not "json.dumps(sort_keys=True)": OPA decodes with `UseNumber` (numbers
  keep their literal text: `1.0`, `1e3`, `-0`, 20-digit integers) and writes each primitive with
  Go's `json.Encoder` with HTML escaping *off*. So `<>&` and non-ASCII stay raw UTF-8, while `\\u2028`
  and `\\u2029` are always escaped, control characters use `\\b \\f \\n \\r \\t` or lower-case `\\u00xx`,
  and invalid UTF-8 / lone surrogates become U+FFFD (as Go's decoder does). Object keys are sorted
  by byte order, which for valid UTF-8 equals Python's code-point order.
- Names in the signature carry no leading slash (`data.json`, `x/policy.rego`): OPA trims one `/`
  from the tar entry name and compares the rest verbatim.

YAML data files are refused: OPA hashes them after its own YAML-to-JSON conversion (which reformats
numbers), and `opa build` never emits them (it merges all data into `/data.json`).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from typing import Any

from bridge.kernel.errors import GroqPolicyError

SIGNATURES_BASENAME = ".signatures.json"
DEFAULT_HASH_ALGORITHM = "SHA-256"
STRUCTURED_BASENAMES = frozenset({"data.json", ".manifest", "data.yaml", "data.yml"})
YAML_BASENAMES = frozenset({"data.yaml", "data.yml"})

# The names OPA accepts in a signature's `algorithm` field (hash.go), mapped to hashlib.
HASH_ALGORITHMS: dict[str, str] = {
    "MD5": "md5",
    "SHA-1": "sha1",
    "SHA-224": "sha224",
    "SHA-256": "sha256",
    "SHA-384": "sha384",
    "SHA-512": "sha512",
    "SHA-512-224": "sha512_224",
    "SHA-512-256": "sha512_256",
}

_UTF8_BOM = b"\xef\xbb\xbf"
_HEX = "0123456789abcdef"
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}
_NEEDS_ESCAPE = re.compile('["\\\\\x00-\x1f\u2028\u2029\ud800-\udfff]')
_NEEDS_ESCAPE_HTML = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029\ud800-\udfff]')


class BundleHashError(GroqPolicyError):
    """A bundle file cannot be hashed the way OPA would (bad JSON in a structured file, YAML data)."""

    status = 422


class _Number(str):
    """A JSON number kept as its literal text, like Go's `json.Number`."""


def is_signatures_file(path: str) -> bool:
    return posixpath.basename(path) == SIGNATURES_BASENAME


def is_structured(path: str) -> bool:
    return posixpath.basename(path) in STRUCTURED_BASENAMES


def signed_name(path: str) -> str:
    """The name OPA uses for `path` in a signature: the tar entry name minus one leading `/`."""
    return path[1:] if path.startswith("/") else path


def _escape_char(ch: str, escape_html: bool) -> str:
    if ch in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[ch]
    if escape_html and ch in _HTML_ESCAPES:
        return _HTML_ESCAPES[ch]
    code = ord(ch)
    if 0xD800 <= code <= 0xDFFF:  # lone surrogate: Go never holds one, it has U+FFFD instead
        return "\ufffd"
    return "\\u" + "".join(_HEX[(code >> shift) & 0xF] for shift in (12, 8, 4, 0))


def go_json_string(value: str, *, escape_html: bool) -> str:
    """`value` as Go's encoding/json writes it (go1.22+ rules; see module docstring)."""
    pattern = _NEEDS_ESCAPE_HTML if escape_html else _NEEDS_ESCAPE
    return '"' + pattern.sub(lambda m: _escape_char(m.group(), escape_html), value) + '"'


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON literal {name}")


def parse_json_like_opa(data: bytes) -> Any:
    """Decode JSON the way OPA's `util.Unmarshal` does: BOM stripped, numbers kept as written."""
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    text = data.decode("utf-8", errors="replace")
    if not text.strip():
        # Go's json.Valid fails, OPA falls back to YAML-to-JSON, which turns "" into `null`.
        return None
    return json.loads(text, parse_int=_Number, parse_float=_Number, parse_constant=_reject_constant)


def _encode(value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value)):
            if i:
                out.append(",")
            out.append(go_json_string(key, escape_html=False))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, _Number):
        out.append(str.__str__(value))
    elif isinstance(value, str):
        out.append(go_json_string(value, escape_html=False))
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    else:  # pragma: no cover - json.loads yields nothing else
        raise TypeError(f"unexpected JSON value of type {type(value).__name__}")


def canonical_json(data: bytes, *, path: str = "<json>") -> bytes:
    """The exact byte stream OPA feeds to the hash for a structured file."""
    if posixpath.basename(path) in YAML_BASENAMES:
        raise BundleHashError(
            f"{path}: YAML data files are not supported (OPA hashes them after its own YAML-to-JSON "
            f"conversion); ship the data as data.json, as `opa build` does"
        )
    try:
        value = parse_json_like_opa(data)
        out: list[str] = []
        _encode(value, out)
    except (ValueError, RecursionError) as exc:
        raise BundleHashError(f"{path}: invalid JSON, cannot compute its canonical digest: {exc}") from exc
    return "".join(out).encode("utf-8")


def file_digest(path: str, data: bytes, algorithm: str = DEFAULT_HASH_ALGORITHM) -> str:
    """Hex digest of one bundle file exactly as OPA computes it for `algorithm` (e.g. "SHA-256")."""
    try:
        hasher = hashlib.new(HASH_ALGORITHMS[algorithm])
    except KeyError:
        raise BundleHashError(f"{path}: unsupported hashing algorithm: {algorithm}") from None
    hasher.update(canonical_json(data, path=path) if is_structured(path) else data)
    return hasher.hexdigest()
