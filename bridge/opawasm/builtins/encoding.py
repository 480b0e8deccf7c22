"""Encoding builtins: hex.*, urlquery.*, base64url.encode_no_pad, yaml.*, json.marshal_with_options,
json.match_schema / json.verify_schema (topdown encoding.go, json.go, schema.go)."""

from __future__ import annotations

import base64
import re
import urllib.parse
from typing import Any

import msgspec

from bridge.opawasm.builtins.jsonschema_lite import check_schema, unsupported_keywords, validate
from bridge.opawasm.builtins.operands import need_str, type_name
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.errors import BuiltinError, HaltError
from bridge.opawasm.gocompat import goyaml
from bridge.opawasm.gocompat.strconv import quote_rune
from bridge.opawasm.values import RegoSet, to_json


@builtin("hex.encode")
def hex_encode(ctx: EvalContext, s: Any) -> str:
    return need_str(s, 1).encode("utf-8").hex()


@builtin("hex.decode")
def hex_decode(ctx: EvalContext, s: Any) -> str:
    s = need_str(s, 1)
    # Go's hex.DecodeString: the first non-hex byte wins over an odd length
    for ch in s.encode("utf-8"):
        if chr(ch) not in "0123456789abcdefABCDEF":
            shown = chr(ch) if ch < 0x80 else "\ufffd"
            raise BuiltinError(f"encoding/hex: invalid byte: U+{ord(shown):04X} {quote_rune(shown)}")
    if len(s) % 2:
        raise BuiltinError("encoding/hex: odd length hex string")
    return bytes.fromhex(s).decode("utf-8", "replace")


@builtin("base64url.encode_no_pad")
def b64url_nopad(ctx: EvalContext, s: Any) -> str:
    return base64.urlsafe_b64encode(need_str(s, 1).encode()).decode().rstrip("=")


def _query_escape(s: str) -> str:
    return urllib.parse.quote_plus(s, safe="~")


def _query_unescape(s: str) -> str:
    if re.search(r"%(?![0-9a-fA-F]{2})", s):
        bad = re.search(r"%.{0,2}", s)
        raise BuiltinError(f'invalid URL escape "{bad.group(0) if bad else "%"}"')
    return urllib.parse.unquote_plus(s, errors="replace")


@builtin("urlquery.encode")
def urlquery_encode(ctx: EvalContext, s: Any) -> str:
    return _query_escape(need_str(s, 1))


@builtin("urlquery.decode")
def urlquery_decode(ctx: EvalContext, s: Any) -> str:
    try:
        return _query_unescape(need_str(s, 1))
    except UnicodeDecodeError:
        raise BuiltinError("invalid URL escape") from None


@builtin("urlquery.encode_object")
def urlquery_encode_object(ctx: EvalContext, obj: Any) -> str:
    if not isinstance(obj, dict):
        raise BuiltinError(f"operand 1 must be object but got {type_name(obj)}")
    pairs: list[tuple[str, str]] = []
    for k in sorted(obj):
        v = obj[k]
        if isinstance(v, str):
            vals = [v]
        elif isinstance(v, (list, tuple, RegoSet)):
            vals = list(v)
            if not all(isinstance(x, str) for x in vals):
                raise BuiltinError("encode_object: values must be strings")
        else:
            raise BuiltinError("encode_object: values must be strings, arrays or sets of strings")
        pairs += [(k, x) for x in vals]
    return "&".join(f"{_query_escape(k)}={_query_escape(v)}" for k, v in pairs)


@builtin("urlquery.decode_object")
def urlquery_decode_object(ctx: EvalContext, s: Any) -> dict[str, list[str]]:
    s = need_str(s, 1)
    out: dict[str, list[str]] = {}
    for part in s.split("&"):
        if part == "":
            continue
        if ";" in part:
            raise BuiltinError("invalid semicolon separator in query")
        k, _, v = part.partition("=")
        out.setdefault(_query_unescape(k), []).append(_query_unescape(v))
    return out


# -- yaml -------------------------------------------------------------------------------------


@builtin("yaml.unmarshal")
def yaml_unmarshal(ctx: EvalContext, s: Any) -> Any:
    return goyaml.unmarshal(need_str(s, 1))


@builtin("yaml.is_valid")
def yaml_is_valid(ctx: EvalContext, s: Any) -> bool:
    return isinstance(s, str) and goyaml.is_valid(s)


@builtin("yaml.marshal")
def yaml_marshal(ctx: EvalContext, v: Any) -> str:
    return goyaml.marshal(to_json(v))


# -- json -------------------------------------------------------------------------------------


@builtin("json.marshal_with_options")
def json_marshal_with_options(ctx: EvalContext, v: Any, opts: Any) -> str:
    if not isinstance(opts, dict):
        raise BuiltinError(f"operand 2 must be object but got {type_name(opts)}")
    pretty = opts.get("pretty")
    indent = opts.get("indent", "\t")
    prefix = opts.get("prefix", "")
    for k in opts:
        if k not in ("pretty", "indent", "prefix"):
            raise BuiltinError(f'operand 2 object contained unknown key "{k}"')
    if not isinstance(indent, str) or not isinstance(prefix, str):
        raise BuiltinError("indent and prefix must be strings")
    doc = to_json(v)
    compact = msgspec.json.encode(doc, order="sorted").decode()
    if pretty is False or ("indent" not in opts and "prefix" not in opts and not pretty):
        return compact
    return prefix + _go_indent(doc, prefix, indent)


def _go_indent(v: Any, prefix: str, indent: str, depth: int = 0) -> str:
    pad = prefix + indent * (depth + 1)
    end = prefix + indent * depth
    if isinstance(v, dict):
        if not v:
            return "{}"
        items = [f"{pad}{msgspec.json.encode(k).decode()}: {_go_indent(v[k], prefix, indent, depth + 1)}" for k in sorted(v)]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(v, list):
        if not v:
            return "[]"
        items = [pad + _go_indent(x, prefix, indent, depth + 1) for x in v]
        return "[\n" + ",\n".join(items) + "\n" + end + "]"
    return msgspec.json.encode(v).decode()


def _schema_of(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return msgspec.json.decode(v)
        except msgspec.DecodeError:
            raise BuiltinError("invalid JSON string") from None
    if isinstance(v, (dict, list)):
        return to_json(v)
    raise BuiltinError("wrong type, expected string or object")


@builtin("json.verify_schema")
def json_verify_schema(ctx: EvalContext, schema: Any) -> list[Any]:
    try:
        s = _schema_of(schema)
    except BuiltinError as exc:
        return [False, f"jsonschema: {exc}"]
    err = check_schema(s)
    return [err is None, None if err is None else f"jsonschema: {err}"]


@builtin("json.match_schema")
def json_match_schema(ctx: EvalContext, document: Any, schema: Any) -> list[Any]:
    s = _schema_of(schema)
    err = check_schema(s)
    if err is not None:
        raise BuiltinError(err)
    missing = unsupported_keywords(s)
    if missing:
        # failing the evaluation is the only safe answer: ignoring a keyword could pass a bad document
        raise HaltError(f"json.match_schema: schema keywords not supported by this host: {', '.join(sorted(missing))}")
    doc = _schema_of(document)
    errs = validate(doc, s)
    return [not errs, errs]

