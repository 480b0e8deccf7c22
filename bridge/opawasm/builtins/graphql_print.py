"""gqlparser documents (the dicts of gocompat.gqlparser) printed as GraphQL text for graphql-core,
which validates queries: the schema as SDL, a query as an executable document."""

from __future__ import annotations

import json
from typing import Any

from bridge.opawasm.gocompat.gqlparser.parser import (
    BLOCK_VALUE,
    LIST_VALUE,
    OBJECT_VALUE,
    STRING_VALUE,
    VARIABLE,
    Node,
)
from bridge.opawasm.gocompat.gqlparser.validator import Schema, type_text

# what graphql-core declares itself: printing it again would redefine it
_CORE_TYPES = frozenset({"Int", "Float", "String", "Boolean", "ID"})


def value_text(v: Node | None) -> str:
    if not v:
        return "null"
    kind, raw = v.get("Kind"), str(v.get("Raw") or "")
    if kind == VARIABLE:
        return "$" + raw
    if kind in (STRING_VALUE, BLOCK_VALUE):
        return json.dumps(raw)
    if kind == LIST_VALUE:
        return "[" + ", ".join(value_text(c.get("Value")) for c in v.get("Children") or []) + "]"
    if kind == OBJECT_VALUE:
        return "{" + ", ".join(f"{c['Name']}: {value_text(c.get('Value'))}" for c in v.get("Children") or []) + "}"
    return raw


def _arguments(args: list[Node] | None) -> str:
    if not args:
        return ""
    return "(" + ", ".join(f"{a['Name']}: {value_text(a.get('Value'))}" for a in args) + ")"


def _directives(dirs: list[Node] | None) -> str:
    return "".join(f" @{d['Name']}{_arguments(d.get('Arguments'))}" for d in dirs or [])


def _input_values(args: list[Node] | None) -> str:
    if not args:
        return ""
    parts = []
    for a in args:
        default = f" = {value_text(a['DefaultValue'])}" if a.get("DefaultValue") else ""
        parts.append(f"{a['Name']}: {type_text(a['Type'])}{default}{_directives(a.get('Directives'))}")
    return "(" + ", ".join(parts) + ")"


def _type_definition(d: Node) -> str:
    kind, name, dirs = d["Kind"], d["Name"], _directives(d.get("Directives"))
    if kind == "SCALAR":
        return f"scalar {name}{dirs}"
    if kind == "UNION":
        return f"union {name}{dirs} = {' | '.join(d.get('Types') or [])}"
    if kind == "ENUM":
        values = " ".join(f"{v['Name']}{_directives(v.get('Directives'))}" for v in d.get("EnumValues") or [])
        return f"enum {name}{dirs} {{ {values} }}"
    if kind == "INPUT_OBJECT":
        fields = _input_values(d.get("Fields"))[1:-1].replace(", ", "\n  ")
        return f"input {name}{dirs} {{\n  {fields}\n}}"
    keyword = "type" if kind == "OBJECT" else "interface"
    impl = f" implements {' & '.join(d['Interfaces'])}" if d.get("Interfaces") else ""
    fields = "\n  ".join(f"{f['Name']}{_input_values(f.get('Arguments'))}: {type_text(f['Type'])}"
                         f"{_directives(f.get('Directives'))}" for f in d.get("Fields") or [])
    return f"{keyword} {name}{impl}{dirs} {{\n  {fields}\n}}"


def schema_sdl(schema: Schema, core_directives: frozenset[str]) -> str:
    """The validated schema as SDL for graphql-core: its types and directives (not those
    graphql-core declares itself), and its root types."""
    parts = [_type_definition(d) for name, d in sorted(schema.types.items())
             if name not in _CORE_TYPES and not name.startswith("__")]
    for name, d in sorted(schema.directives.items()):
        if name in core_directives:
            continue
        repeatable = " repeatable" if d.get("IsRepeatable") else ""
        parts.append(f"directive @{name}{_input_values(d.get('Arguments'))}{repeatable} on "
                     f"{' | '.join(d.get('Locations') or [])}")
    roots = " ".join(f"{op}: {d['Name']}" for op, d in sorted(schema.roots.items()))
    if roots:
        parts.append(f"schema {{ {roots} }}")
    return "\n\n".join(parts)


def _selection_set(selections: list[Node] | None, indent: str) -> str:
    if not selections:
        return ""
    inner = indent + "  "
    lines = [inner + _selection(s, inner) for s in selections]
    return " {\n" + "\n".join(lines) + "\n" + indent + "}"


def _selection(s: Node, indent: str) -> str:
    if "Alias" in s:  # a field
        alias = f"{s['Alias']}: " if s.get("Alias") and s["Alias"] != s["Name"] else ""
        return (f"{alias}{s['Name']}{_arguments(s.get('Arguments'))}{_directives(s.get('Directives'))}"
                f"{_selection_set(s.get('SelectionSet'), indent)}")
    if "TypeCondition" in s:  # an inline fragment
        on = f" on {s['TypeCondition']}" if s.get("TypeCondition") else ""
        return f"...{on}{_directives(s.get('Directives'))}{_selection_set(s.get('SelectionSet'), indent)}"
    return f"...{s['Name']}{_directives(s.get('Directives'))}"


def _variables(defs: list[Node] | None) -> str:
    if not defs:
        return ""
    parts = []
    for v in defs:
        default = f" = {value_text(v['DefaultValue'])}" if v.get("DefaultValue") else ""
        parts.append(f"${v['Variable']}: {type_text(v['Type'])}{default}{_directives(v.get('Directives'))}")
    return "(" + ", ".join(parts) + ")"


def query_text(doc: Node) -> str:
    parts = []
    for op in doc.get("Operations") or []:
        name = f" {op['Name']}" if op.get("Name") else ""
        head = f"{op.get('Operation') or 'query'}{name}{_variables(op.get('VariableDefinitions'))}"
        parts.append(f"{head}{_directives(op.get('Directives'))}{_selection_set(op.get('SelectionSet'), '')}")
    for f in doc.get("Fragments") or []:
        parts.append(f"fragment {f['Name']} on {f['TypeCondition']}{_directives(f.get('Directives'))}"
                     f"{_selection_set(f.get('SelectionSet'), '')}")
    return "\n\n".join(parts)


def empty_field(selections: Any) -> bool:
    """Does a selection set (at any depth) hold a field without a name? (what gqlparser makes of
    an inline fragment given as an AST object: see graphql.query_document)"""
    for s in selections or []:
        if "Alias" in s and not s.get("Name"):
            return True
        if empty_field(s.get("SelectionSet")):
            return True
    return False
