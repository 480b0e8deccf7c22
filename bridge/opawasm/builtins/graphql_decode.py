"""AST objects back into gqlparser documents, as OPA turns them back with Go's encoding/json
(`objectToQueryDocument`, `objectToSchemaDocument`): fields by their Go names, unknown keys
ignored, null leaves a field as it was, a value of the wrong JSON type fails the whole decoding.

gqlparser's own decoders for selections apply: every selection is tried as a Field first, and a
Field decodes from almost anything, so a fragment spread given as an object becomes a field named
after the fragment, and an inline fragment a field without a name. OPA answers so, and so does
this.
"""

from __future__ import annotations

from typing import Any

from bridge.opawasm.gocompat.gqlparser.parser import Node

Spec = dict[str, Any]

_COMMENT: Spec = {"List": ("list", {"Value": "str"})}
_C = ("obj", _COMMENT)
_DESCRIBED: Spec = {"Description": "str", "BeforeDescriptionComment": _C, "AfterDescriptionComment": _C}
_TYPE: Spec = {"NamedType": "str", "NonNull": "bool"}
_TYPE["Elem"] = ("obj", _TYPE)
_VALUE: Spec = {"Raw": "str", "Kind": "int", "Comment": _C, "ExpectedTypeHasDefault": "bool"}
_VALUE["Children"] = ("list", {"Name": "str", "Value": ("obj", _VALUE), "Comment": _C})
_ARGUMENT: Spec = {"Name": "str", "Value": ("obj", _VALUE), "Comment": _C}
_DIRECTIVE: Spec = {"Name": "str", "Arguments": ("list", _ARGUMENT), "Location": "str"}
_VARIABLE: Spec = {"Description": "str", "Variable": "str", "Type": ("obj", _TYPE), "DefaultValue": ("obj", _VALUE),
                   "Directives": ("list", _DIRECTIVE), "Comment": _C, "Used": "bool"}
_INPUT_VALUE: Spec = {**_DESCRIBED, "Name": "str", "DefaultValue": ("obj", _VALUE), "Type": ("obj", _TYPE),
                      "Directives": ("list", _DIRECTIVE)}
_FIELD_DEF: Spec = {**_INPUT_VALUE, "Arguments": ("list", _INPUT_VALUE)}
_DEFINITION: Spec = {**_DESCRIBED, "Kind": "str", "Name": "str", "Directives": ("list", _DIRECTIVE),
                     "Interfaces": "strlist", "Fields": ("list", _FIELD_DEF), "Types": "strlist",
                     "EnumValues": ("list", {**_DESCRIBED, "Name": "str", "Directives": ("list", _DIRECTIVE)}),
                     "BuiltIn": "bool", "EndOfDefinitionComment": _C}
_SCHEMA_DEF: Spec = {**_DESCRIBED, "Directives": ("list", _DIRECTIVE), "EndOfDefinitionComment": _C,
                     "OperationTypes": ("list", {"Operation": "str", "Type": "str", "Comment": _C})}
_DIRECTIVE_DEF: Spec = {**_DESCRIBED, "Name": "str", "Arguments": ("list", _INPUT_VALUE),
                        "Directives": ("list", _DIRECTIVE), "Locations": "strlist", "IsRepeatable": "bool"}
_SCHEMA_DOC: Spec = {"Schema": ("list", _SCHEMA_DEF), "SchemaExtension": ("list", _SCHEMA_DEF),
                     "Directives": ("list", _DIRECTIVE_DEF), "DirectiveExtensions": ("list", _DIRECTIVE_DEF),
                     "Definitions": ("list", _DEFINITION), "Extensions": ("list", _DEFINITION), "Comment": _C}
# what gqlparser's own decoders read of a definition or selection (the rest keeps its zero value)
_SKIPPED = {"Description": "", "Comment": None}
_ZERO = {"str": "", "bool": False, "int": 0}


class DecodeError(ValueError):
    """What json.Unmarshal would return: the document is not a gqlparser document."""


def decode(v: Any, spec: Spec) -> Node:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise DecodeError("json: cannot unmarshal a non-object into a struct")
    out: Node = {}
    for key, kind in spec.items():
        x = v.get(key)
        if isinstance(kind, str):
            out[key] = _scalar(x, kind, key)
        elif x is None:
            out[key] = None
        elif kind[0] == "obj":
            out[key] = decode(x, kind[1])
        else:
            if not isinstance(x, list):
                raise DecodeError(f"json: cannot unmarshal into {key}")
            out[key] = [decode(i, kind[1]) if i is not None else None for i in x]
    return out


def _scalar(x: Any, kind: str, key: str) -> Any:
    if x is None:
        return None if kind == "strlist" else _ZERO[kind]
    ok = {"str": isinstance(x, str), "bool": isinstance(x, bool),
          "int": isinstance(x, int) and not isinstance(x, bool),
          "strlist": isinstance(x, list) and all(isinstance(i, str) for i in x)}[kind]
    if not ok:
        raise DecodeError(f"json: cannot unmarshal into Go struct field {key}")
    return x


def schema_document(v: Any) -> Node:
    return decode(v, _SCHEMA_DOC)


_FIELD: Spec = {"Alias": "str", "Name": "str", "Arguments": ("list", _ARGUMENT), "Directives": ("list", _DIRECTIVE)}
_SPREAD: Spec = {"Name": "str", "Directives": ("list", _DIRECTIVE), "Comment": _C}
_INLINE: Spec = {"TypeCondition": "str", "Directives": ("list", _DIRECTIVE)}


def _selection(v: Any) -> Node | None:
    """gqlparser's UnmarshalSelectionSet for one item: a Field if it decodes, else a
    FragmentSpread, else an InlineFragment, else nothing."""
    for spec in (_FIELD, _SPREAD, _INLINE):
        try:
            node = decode(v, spec)
        except DecodeError:
            continue
        return node
    return None


def query_document(v: Any) -> Node:
    """objectToQueryDocument."""
    if not isinstance(v, dict):
        raise DecodeError("json: cannot unmarshal a non-object into a QueryDocument")
    ops = v.get("Operations") or []
    frags = v.get("Fragments") or []
    if not isinstance(ops, list) or not isinstance(frags, list):
        raise DecodeError("json: cannot unmarshal into Operations or Fragments")
    op_spec: Spec = {"Operation": "str", "Name": "str", "VariableDefinitions": ("list", _VARIABLE),
                     "Directives": ("list", _DIRECTIVE)}
    frag_spec: Spec = {"Name": "str", "VariableDefinition": ("list", _VARIABLE), "TypeCondition": "str",
                       "Directives": ("list", _DIRECTIVE)}
    return {"Operations": [_tree(o, op_spec) for o in ops], "Fragments": [_tree(f, frag_spec) for f in frags]}


def _tree(v: Any, spec: Spec) -> Node:
    """A definition and its selections, recursively (each selection by gqlparser's rule)."""
    node = {**_SKIPPED, **decode(v, spec)}
    node["SelectionSet"] = _selection_tree(v.get("SelectionSet") if isinstance(v, dict) else None)
    return node


def _selection_tree(v: Any) -> list[Node]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise DecodeError("json: cannot unmarshal a non-array into a selection set")
    out = []
    for item in v:
        node = _selection(item)
        if node is None:
            continue
        if "TypeCondition" in node or "Alias" in node:
            node["SelectionSet"] = _selection_tree(item.get("SelectionSet") if isinstance(item, dict) else None)
        if "Alias" in node or "TypeCondition" in node:
            node["Comment"] = None  # gqlparser's decoders of these skip it
        out.append(node)
    return out
