"""A small JSON Schema (draft 4-7 core keywords) validator for json.match_schema/verify_schema.

Errors are shaped like OPA's (gojsonschema): `{"error", "type", "field", "desc"}`, with the
common messages reproduced; keywords outside the core set are accepted and ignored.
"""

from __future__ import annotations

from typing import Any

import msgspec

from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.gocompat.errors import GoError
from bridge.opawasm.gocompat.regexp import compile_go

_TYPES = {"null", "boolean", "object", "array", "number", "string", "integer"}
_VALIDATED = {
    "type", "enum", "const", "properties", "required", "patternProperties", "additionalProperties",
    "minProperties", "maxProperties", "items", "minItems", "maxItems", "uniqueItems", "minLength",
    "maxLength", "pattern", "minimum", "maximum", "allOf", "anyOf", "not",
}
_ANNOTATIONS = {"$schema", "$id", "id", "title", "description", "default", "examples", "$comment", "definitions",
                "$defs", "readOnly", "writeOnly", "deprecated"}


def unsupported_keywords(s: Any) -> set[str]:
    """Validation keywords this validator does not implement (it must not pretend they passed)."""
    out: set[str] = set()
    if isinstance(s, dict):
        out |= {k for k in s if k not in _VALIDATED and k not in _ANNOTATIONS}
        for k in ("properties", "patternProperties"):
            for sub in (s.get(k) or {}).values() if isinstance(s.get(k), dict) else ():
                out |= unsupported_keywords(sub)
        for k in ("items", "additionalProperties", "not"):
            sub = s.get(k)
            for x in sub if isinstance(sub, list) else [sub]:
                out |= unsupported_keywords(x)
        for k in ("allOf", "anyOf"):
            for x in s.get(k) or []:
                out |= unsupported_keywords(x)
    return out


def check_schema(s: Any) -> str | None:
    if isinstance(s, bool):
        return None
    if not isinstance(s, dict):
        return "schema must be an object"
    t = s.get("type")
    if t is not None:
        ts = t if isinstance(t, list) else [t]
        for x in ts:
            if not isinstance(x, str):
                return "Invalid type. Expected: type, given: string/Array Of Strings"
            if x not in _TYPES:
                return f"has a primitive type that is NOT VALID -- given: /{x}/ Expected valid values are:[array boolean integer number null object string]"
    for k in ("properties", "definitions", "patternProperties"):
        if k in s:
            if not isinstance(s[k], dict):
                return f"{k[0].upper() + k[1:]} must be of type object"
            for sub in s[k].values():
                e = check_schema(sub)
                if e:
                    return e
    if "required" in s and not isinstance(s["required"], list):
        return "required must be of an array"
    if "items" in s:
        items = s["items"]
        for sub in items if isinstance(items, list) else [items]:
            e = check_schema(sub)
            if e:
                return e
    return None


def _jtype(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "integer" if v.is_integer() else "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _is(v: Any, t: str) -> bool:
    jt = _jtype(v)
    return jt == t or (t == "number" and jt == "integer")


def _err(field: str, typ: str, desc: str) -> dict[str, str]:
    return {"error": f"{field}: {desc}", "type": typ, "field": field, "desc": desc}


def validate(doc: Any, schema: Any, field: str = "(Root)") -> list[dict[str, str]]:
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [_err(field, "false", "False always fails validation")]
    t = schema.get("type")
    if t is not None:
        ts = t if isinstance(t, list) else [t]
        if not any(_is(doc, x) for x in ts):
            return [_err(field, "invalid_type", f"Invalid type. Expected: {', '.join(ts)}, given: {_jtype(doc)}")]
    errs: list[dict[str, str]] = []
    if "enum" in schema and doc not in schema["enum"]:
        allowed = ", ".join(_repr(x) for x in schema["enum"])
        errs.append(_err(field, "enum", f"{field} must be one of the following: {allowed}"))
    if "const" in schema and doc != schema["const"]:
        errs.append(_err(field, "const", f"{field} does not match: {_repr(schema['const'])}"))
    if isinstance(doc, dict):
        errs += _validate_object(doc, schema, field)
    if isinstance(doc, list):
        errs += _validate_array(doc, schema, field)
    if isinstance(doc, str):
        errs += _validate_string(doc, schema, field)
    if isinstance(doc, (int, float)) and not isinstance(doc, bool):
        if "minimum" in schema and doc < schema["minimum"]:
            errs.append(_err(field, "number_gte", f"Must be greater than or equal to {_repr(schema['minimum'])}"))
        if "maximum" in schema and doc > schema["maximum"]:
            errs.append(_err(field, "number_lte", f"Must be less than or equal to {_repr(schema['maximum'])}"))
    for sub in schema.get("allOf", []):
        errs += validate(doc, sub, field)
    if "anyOf" in schema and not any(not validate(doc, s, field) for s in schema["anyOf"]):
        errs.append(_err(field, "number_any_of", "Must validate at least one schema (anyOf)"))
    if "not" in schema and not validate(doc, schema["not"], field):
        errs.append(_err(field, "number_not", "Must not validate the schema (not)"))
    return errs


def _validate_object(doc: dict[str, Any], schema: dict[str, Any], field: str) -> list[dict[str, str]]:
    errs: list[dict[str, str]] = []
    props = schema.get("properties", {})
    for req in schema.get("required", []):
        if req not in doc:
            errs.append(_err(field, "required", f"{req} is required"))
    for k, v in doc.items():
        sub_field = k if field == "(Root)" else f"{field}.{k}"
        if k in props:
            errs += validate(v, props[k], sub_field)
            continue
        matched = False
        for pat, sub in schema.get("patternProperties", {}).items():
            if _matches(pat, k):
                matched = True
                errs += validate(v, sub, sub_field)
        if not matched and schema.get("additionalProperties") is False:
            errs.append(_err(field, "additional_property_not_allowed", f"Additional property {k} is not allowed"))
        elif not matched and isinstance(schema.get("additionalProperties"), dict):
            errs += validate(v, schema["additionalProperties"], sub_field)
    if "minProperties" in schema and len(doc) < schema["minProperties"]:
        errs.append(_err(field, "array_min_properties", f"Must have at least {schema['minProperties']} properties"))
    if "maxProperties" in schema and len(doc) > schema["maxProperties"]:
        errs.append(_err(field, "array_max_properties", f"Must have at most {schema['maxProperties']} properties"))
    return errs


def _validate_array(doc: list[Any], schema: dict[str, Any], field: str) -> list[dict[str, str]]:
    errs: list[dict[str, str]] = []
    items = schema.get("items")
    if isinstance(items, dict):
        for i, x in enumerate(doc):
            errs += validate(x, items, str(i) if field == "(Root)" else f"{field}.{i}")
    elif isinstance(items, list):
        for i, (x, sub) in enumerate(zip(doc, items, strict=False)):
            errs += validate(x, sub, str(i) if field == "(Root)" else f"{field}.{i}")
    if "minItems" in schema and len(doc) < schema["minItems"]:
        errs.append(_err(field, "array_min_items", f"Array must have at least {schema['minItems']} items"))
    if "maxItems" in schema and len(doc) > schema["maxItems"]:
        errs.append(_err(field, "array_max_items", f"Array must have at most {schema['maxItems']} items"))
    if schema.get("uniqueItems"):
        seen: dict[str, int] = {}
        for i, x in enumerate(doc):
            key = _repr(x)
            if key in seen:
                errs.append(_err(field, "unique", f"array items[{seen[key]},{i}] must be unique"))
                break
            seen[key] = i
    return errs


def _validate_string(doc: str, schema: dict[str, Any], field: str) -> list[dict[str, str]]:
    errs: list[dict[str, str]] = []
    n = len(doc)
    if "minLength" in schema and n < schema["minLength"]:
        errs.append(_err(field, "string_gte", f"String length must be greater than or equal to {schema['minLength']}"))
    if "maxLength" in schema and n > schema["maxLength"]:
        errs.append(_err(field, "string_lte", f"String length must be less than or equal to {schema['maxLength']}"))
    if "pattern" in schema and not _matches(schema["pattern"], doc):
        errs.append(_err(field, "pattern", f"Does not match pattern '{schema['pattern']}'"))
    return errs


def _matches(pattern: str, text: str) -> bool:
    """A schema's pattern on Go's regexp (RE2: linear time); a pattern Go refuses is an error."""
    try:
        return compile_go(pattern).search(text)
    except GoError as exc:
        raise BuiltinError(f"jsonschema: {exc}") from None


def _repr(v: Any) -> str:
    return msgspec.json.encode(v).decode()
