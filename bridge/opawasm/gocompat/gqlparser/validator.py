"""gqlparser's ValidateSchemaDocument (validator/schema.go): the schema document merged (extensions
into their types, also of types never defined) and checked, with gqlparser's messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.opawasm.gocompat.gqlparser.lexer import GQLError, go_quote
from bridge.opawasm.gocompat.gqlparser.parser import NULL_VALUE, OBJECT_VALUE, Node
from bridge.opawasm.gocompat.gqlparser.prelude import PRELUDE_DIRECTIVES

_EMPTY = {"INPUT_OBJECT": "input fields", "ENUM": "unique enum values", "UNION": "member types"}


def _err(pos: Any, message: str) -> GQLError:
    if isinstance(pos, (tuple, list)) and len(pos) == 2:
        return GQLError(message, pos[0], pos[1])
    return GQLError(message)


def type_name(t: Node) -> str:
    return str(t.get("NamedType") or "") or type_name(t.get("Elem") or {"NamedType": ""})


def type_text(t: Node) -> str:
    bang = "!" if t.get("NonNull") else ""
    if t.get("NamedType"):
        return f"{t['NamedType']}{bang}"
    return f"[{type_text(t.get('Elem') or {})}]{bang}"


@dataclass
class Schema:
    types: dict[str, Node] = field(default_factory=dict)
    directives: dict[str, Node] = field(default_factory=dict)
    possible: dict[str, list[Node]] = field(default_factory=dict)
    roots: dict[str, Node] = field(default_factory=dict)  # query / mutation / subscription


def validate_schema_document(doc: Node) -> Schema:
    """The validated schema, or GQLError with gqlparser's message."""
    schema = Schema()
    defs = _merge_types(schema, doc)
    for d in defs:
        for member in (d.get("Types") or []) if d["Kind"] == "UNION" else []:
            schema.possible.setdefault(d["Name"], []).append(schema.types.get(member) or {})
        if d["Kind"] in ("OBJECT", "INPUT_OBJECT", "INTERFACE"):
            for intf in d.get("Interfaces") or []:
                schema.possible.setdefault(intf, []).append(d)
            if d["Kind"] != "INTERFACE":
                schema.possible.setdefault(d["Name"], []).append(d)
    _merge_directives(schema, doc)
    positions = _roots(schema, doc)
    for name in sorted(schema.types):
        _definition(schema, schema.types[name])
    _input_cycles(schema)
    for name in sorted(schema.directives):
        _directive_definition(schema, schema.directives[name])
    if not doc.get("Schema"):
        for op, name in (("query", "Query"), ("mutation", "Mutation"), ("subscription", "Subscription")):
            if op not in schema.roots and name in schema.types:
                schema.roots[op] = schema.types[name]
    for op, message in (("query", "Query root type must be Object type, it cannot be {}."),
                        ("mutation", "Mutation root type must be Object type if provided, it cannot be {}."),
                        ("subscription", "Subscription root type must be Object type if provided, it cannot be {}.")):
        root = schema.roots.get(op)
        if root is not None and root["Kind"] != "OBJECT":
            raise _err(positions.get(op, root.get("Position")), message.format(root["Name"]))
    return schema


def _merge_types(schema: Schema, doc: Node) -> list[Node]:
    for d in doc.get("Definitions") or []:
        if d["Name"] in schema.types:
            raise _err(d.get("Position"), f"Cannot redeclare type {d['Name']}.")
        schema.types[d["Name"]] = d
    defs = list(doc.get("Definitions") or [])
    for ext in doc.get("Extensions") or []:
        d = schema.types.get(ext["Name"])
        if d is None:  # gqlparser: an extension of an undefined type defines it
            d = schema.types[ext["Name"]] = {"Kind": ext["Kind"], "Name": ext["Name"], "Position": ext.get("Position"),
                                             "BuiltIn": False}
            defs.append(d)
        if d["Kind"] != ext["Kind"]:
            raise _err(ext.get("Position"), f"Cannot extend type {ext['Name']} because the base type is a "
                                            f"{d['Kind']}, not {ext['Kind']}.")
        for key in ("Directives", "Interfaces", "Fields", "Types", "EnumValues"):
            d[key] = (d.get(key) or []) + (ext.get(key) or [])
    return defs


def _merge_directives(schema: Schema, doc: Node) -> None:
    for d in doc.get("Directives") or []:
        if d["Name"] in schema.directives and d["Name"] not in PRELUDE_DIRECTIVES:
            raise _err(d.get("Position"), f"Cannot redeclare directive {d['Name']}.")
        schema.directives[d["Name"]] = d
    for ext in doc.get("DirectiveExtensions") or []:
        d = schema.directives.get(ext["Name"])
        if d is None:
            raise _err(ext.get("Position"), f"Cannot extend directive @{ext['Name']} because it is not defined.")
        d["Directives"] = (d.get("Directives") or []) + (ext.get("Directives") or [])


def _roots(schema: Schema, doc: Node) -> dict[str, Any]:
    definitions = doc.get("Schema") or []
    if len(definitions) > 1:
        raise _err(definitions[1].get("Position"),
                   "Cannot have multiple schema entry points, consider schema extensions instead.")
    positions: dict[str, Any] = {}
    for sd in definitions + (doc.get("SchemaExtension") or []):
        for entry in sd.get("OperationTypes") or []:
            op = entry["Operation"]
            if op in positions:
                raise _err(entry.get("Position"), f"There can be only one {op} type in schema.")
            positions[op] = entry.get("Position")
            d = schema.types.get(entry["Type"])
            if d is None:
                raise _err(entry.get("Position"),
                           f"Schema root {op} refers to a type {entry['Type']} that does not exist.")
            schema.roots[op] = d
        _directives(schema, sd.get("Directives") or [], "SCHEMA", None, True)
    return positions


def _name(pos: Any, name: str) -> None:
    if name.startswith("__"):
        raise _err(pos, f'Name "{name}" must not begin with "__", which is reserved by GraphQL introspection.')


def _type_ref(schema: Schema, t: Node) -> None:
    if type_name(t) not in schema.types:
        raise _err(t.get("Position"), f"Undefined type {type_name(t)}.")


def _definition(schema: Schema, d: Node) -> None:
    kind, fields = d["Kind"], d.get("Fields") or []
    for f in fields:
        _name(f.get("Position"), f["Name"])
        _type_ref(schema, f["Type"])
        _input_field_names(f.get("DefaultValue"))
        dup = _duplicate(f.get("Arguments") or [])
        if dup is not None:
            raise _err(dup.get("Position"), f"Argument {d['Name']}.{f['Name']}({dup['Name']}:) can only be defined once.")
        _args(schema, f.get("Arguments") or [], None)
        where = "INPUT_FIELD_DEFINITION" if kind == "INPUT_OBJECT" else "FIELD_DEFINITION"
        _directives(schema, f.get("Directives") or [], where, None, True)
    for t in d.get("Types") or []:
        member = schema.types.get(t)
        if member is None:
            raise _err(d.get("Position"), f"Undefined type {go_quote(t)}.")
        if member["Kind"] != "OBJECT":
            raise _err(d.get("Position"), f"{kind} type {go_quote(t)} must be OBJECT.")
    interfaces = d.get("Interfaces") or []
    for i, intf in enumerate(interfaces):
        if intf in interfaces[:i]:
            raise _err(d.get("Position"), f"Type {d['Name']} can only implement {intf} once.")
        _implements(schema, d, intf)
    _kind_rules(schema, d)
    _unique(d)
    if not d.get("BuiltIn"):
        _name(d.get("Position"), d["Name"])
    _directives(schema, d.get("Directives") or [], kind, None, False)


def _kind_rules(schema: Schema, d: Node) -> None:
    kind, fields = d["Kind"], d.get("Fields") or []
    if kind in ("OBJECT", "INTERFACE", "INPUT_OBJECT", "UNION", "ENUM"):
        members = d.get("EnumValues") if kind == "ENUM" else d.get("Types") if kind == "UNION" else fields
        if not members:
            raise _err(d.get("Position"), f"{kind} {d['Name']}: must define one or more {_EMPTY.get(kind, 'fields')}.")
    allowed = {"OBJECT": ("SCALAR", "OBJECT", "INTERFACE", "UNION", "ENUM"),
               "INTERFACE": ("SCALAR", "OBJECT", "INTERFACE", "UNION", "ENUM"),
               "INPUT_OBJECT": ("SCALAR", "ENUM", "INPUT_OBJECT")}.get(kind, ())
    for f in fields if allowed else []:
        t = schema.types.get(type_name(f["Type"]))
        if t is not None and t["Kind"] not in allowed:
            subject = f"{t['Kind']} {f['Name']}" if kind == "INPUT_OBJECT" else f"{kind} {d['Name']}"
            raise _err(f.get("Position"), f"{subject}: field must be one of {', '.join(allowed)}.")
    for v in d.get("EnumValues") or [] if kind == "ENUM" else []:
        _name(v.get("Position"), v["Name"])
        if v["Name"] in ("true", "false", "null"):
            raise _err(v.get("Position"), f"{kind} {d['Name']}: non-enum value {v['Name']}.")
        _directives(schema, v.get("Directives") or [], "ENUM_VALUE", None, True)


def _unique(d: Node) -> None:
    for label, key in (("Field", "Fields"), ("Enum value", "EnumValues")):
        seen: set[str] = set()
        for item in d.get(key) or []:
            if item["Name"] in seen:
                raise _err(item.get("Position"), f"{label} {d['Name']}.{item['Name']} can only be defined once.")
            seen.add(item["Name"])
    members = d.get("Types") or []
    positions = d.get("TypePositions") or []
    for j, t in enumerate(members):
        if t in members[:j]:
            pos = positions[j] if len(positions) == len(members) and positions[j] else d.get("Position")
            raise _err(pos, f"Union type {d['Name']} can only include type {t} once.")


def _duplicate(args: list[Node]) -> Node | None:
    for i, a in enumerate(args):
        if any(b["Name"] == a["Name"] for b in args[:i]):
            return a
    return None


def _args(schema: Schema, args: list[Node], current: Node | None) -> None:
    for a in args:
        _name(a.get("Position"), a["Name"])
        _type_ref(schema, a["Type"])
        _input_field_names(a.get("DefaultValue"))
        t = schema.types[type_name(a["Type"])]
        if t["Kind"] not in ("SCALAR", "ENUM", "INPUT_OBJECT"):
            raise _err(a.get("Position"), f"cannot use {type_text(a['Type'])} as argument {a['Name']} because "
                                          f"{t['Kind']} is not a valid input type")
        _directives(schema, a.get("Directives") or [], "ARGUMENT_DEFINITION", current, True)


def _directive_definition(schema: Schema, d: Node) -> None:
    _name(d.get("Position"), d["Name"])
    dup = _duplicate(d.get("Arguments") or [])
    if dup is not None:
        raise _err(dup.get("Position"), f"Argument @{d['Name']}({dup['Name']}:) can only be defined once.")
    _directives(schema, d.get("Directives") or [], "DIRECTIVE_DEFINITION", d, True)
    _args(schema, d.get("Arguments") or [], d)


def _directives(schema: Schema, dirs: list[Node], location: str, current: Node | None, single: bool) -> None:
    seen: set[str] = set()
    for dir_ in dirs:
        pos, name = dir_.get("Position"), dir_["Name"]
        _name(pos, name)
        if current is not None and name == current["Name"]:
            raise _err(pos, f"Directive {name} cannot refer to itself.")
        definition = schema.directives.get(name)
        if definition is None:
            raise _err(pos, f"Undefined directive {name}.")
        if single:
            if name in seen and not definition.get("IsRepeatable"):
                raise _err(pos, f"The directive {name} can only be used once at this location.")
            seen.add(name)
        if location not in (definition.get("Locations") or []):
            raise _err(pos, f"Directive {name} is not applicable on {location}.")
        _directive_arguments(definition, dir_)


def _directive_arguments(definition: Node, dir_: Node) -> None:
    declared = {a["Name"]: a for a in definition.get("Arguments") or []}
    given = dir_.get("Arguments") or []
    for i, arg in enumerate(given):
        if arg["Name"] not in declared:
            raise _err(arg.get("Position"), f"Undefined argument {arg['Name']} for directive {dir_['Name']}.")
        if any(b["Name"] == arg["Name"] for b in given[:i]):
            raise _err(arg.get("Position"), f"There can be only one argument named {arg['Name']}.")
    for want in declared.values():
        if want["Type"].get("NonNull") and want.get("DefaultValue") is None:
            arg = next((a for a in given if a["Name"] == want["Name"]), None)
            if arg is None or (arg.get("Value") or {}).get("Kind") == NULL_VALUE:
                raise _err(dir_.get("Position"), f"Argument {want['Name']} for directive {dir_['Name']} cannot be null.")
    for arg in given:
        _input_field_names(arg.get("Value"))


def _input_field_names(value: Node | None) -> None:
    if not value:
        return
    seen: set[str] = set()
    for child in value.get("Children") or []:
        if value.get("Kind") == OBJECT_VALUE:
            if child["Name"] in seen:
                raise _err(child.get("Position"), f'There can be only one input field named "{child["Name"]}".')
            seen.add(child["Name"])
        _input_field_names(child.get("Value"))


def _implements(schema: Schema, d: Node, name: str) -> None:
    intf = schema.types.get(name)
    if intf is None:
        raise _err(d.get("Position"), f"Undefined type {go_quote(name)}.")
    if intf["Kind"] != "INTERFACE":
        raise _err(d.get("Position"), f"{go_quote(name)} is a non interface type {intf['Kind']}.")
    if intf["Name"] == d["Name"]:
        raise _err(d.get("Position"),
                   f"Type {d['Name']} cannot implement itself because it would create a circular reference.")
    fields = {f["Name"]: f for f in d.get("Fields") or []}
    for required in intf.get("Fields") or []:
        found = fields.get(required["Name"])
        head = f"For {d['Name']} to implement {intf['Name']}"
        if found is None:
            raise _err(d.get("Position"), f"{head} it must have a field called {required['Name']}.")
        if not _covariant(schema, required["Type"], found["Type"]):
            raise _err(found.get("Position"),
                       f"{head} the field {required['Name']} must have type {type_text(required['Type'])}.")
        _implemented_args(d, intf, required, found)
    for transitive in intf.get("Interfaces") or []:
        if transitive not in (d.get("Interfaces") or []):
            if transitive == d["Name"]:
                raise _err(d.get("Position"), f"Type {d['Name']} cannot implement {name} because it would create "
                                              "a circular reference.")
            raise _err(d.get("Position"), f"Type {d['Name']} must implement {transitive} because it is "
                                          f"implemented by {name}.")


def _implemented_args(d: Node, intf: Node, required: Node, found: Node) -> None:
    head = f"For {d['Name']} to implement {intf['Name']} the field {required['Name']}"
    have = {a["Name"]: a for a in found.get("Arguments") or []}
    want = {a["Name"]: a for a in required.get("Arguments") or []}
    for name, arg in want.items():
        if name not in have:
            raise _err(found.get("Position"), f"{head} must have the same arguments but it is missing {name}.")
        if not _compatible(arg["Type"], have[name]["Type"]):
            raise _err(have[name].get("Position"), f"{head} must have the same arguments but {name} has the wrong type.")
    for name, arg in have.items():
        if name not in want and arg["Type"].get("NonNull") and arg.get("DefaultValue") is None:
            raise _err(arg.get("Position"), f"For {d['Name']} to implement {intf['Name']} any additional arguments on "
                                            f"{found['Name']} must be optional or have a default value but {name} is required.")


def _compatible(t: Node, other: Node) -> bool:
    """Type.IsCompatible."""
    if t.get("NamedType") != other.get("NamedType"):
        return False
    if t.get("Elem") is not None and other.get("Elem") is None:
        return False
    if t.get("Elem") is not None and not _compatible(t["Elem"], other["Elem"]):
        return False
    return bool(t.get("NonNull")) if other.get("NonNull") else True


def _covariant(schema: Schema, required: Node, actual: Node) -> bool:
    if required.get("NonNull") and not actual.get("NonNull"):
        return False
    if required.get("NamedType"):
        if required["NamedType"] == actual.get("NamedType"):
            return True
        return any(pt.get("Name") == actual.get("NamedType") for pt in schema.possible.get(required["NamedType"], []))
    if required.get("Elem") is not None and actual.get("Elem") is None:
        return False
    return _covariant(schema, required["Elem"], actual["Elem"])


def _input_cycles(schema: Schema) -> None:
    visited: set[str] = set()
    path: list[Node] = []
    index: dict[str, int] = {}

    def detect(d: Node) -> None:
        if d["Name"] in visited:
            return
        visited.add(d["Name"])
        index[d["Name"]] = len(path)
        for f in d.get("Fields") or []:
            t = f["Type"]
            if not t.get("NonNull") or not t.get("NamedType"):
                continue
            ft = schema.types.get(t["NamedType"])
            if ft is None or ft["Kind"] != "INPUT_OBJECT":
                continue
            path.append(f)
            if ft["Name"] in index:
                cycle = path[index[ft["Name"]] :]
                names = ".".join(c["Name"] for c in cycle)
                raise _err(cycle[0].get("Position"), f"Cannot reference Input Object {go_quote(ft['Name'])} within "
                                                     f"itself through a series of non-null fields: {go_quote(names)}.")
            detect(ft)
            path.pop()
        del index[d["Name"]]

    for name in sorted(schema.types):
        if schema.types[name]["Kind"] == "INPUT_OBJECT":
            detect(schema.types[name])
