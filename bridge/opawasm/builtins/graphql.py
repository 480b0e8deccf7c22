"""graphql.parse_query / parse_schema / parse / parse_and_verify / is_valid / schema_is_valid
(topdown graphql.go), with OPA's answers: documents parsed and schemas validated by the gqlparser
port (gocompat.gqlparser), returned in gqlparser's AST shape with OPA's pruning, and queries
validated against the schema by graphql-core (`graphql_print` hands it both as GraphQL text).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import graphql as gqlcore
from graphql.validation import specified_rules

from bridge.opawasm.builtins.graphql_decode import DecodeError, query_document, schema_document
from bridge.opawasm.builtins.graphql_print import empty_field, query_text, schema_sdl
from bridge.opawasm.builtins.operands import type_name
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.gocompat.gqlparser import GQLError, Schema, parse_query, parse_schema, validate_schema_document
from bridge.opawasm.gocompat.gqlparser.prelude import PRELUDE

Node = dict[str, Any]
# graphql-core's rules for gqlparser's: the @defer/@stream rules are graphql-js's, not gqlparser's
_RULES = tuple(r for r in specified_rules if "Defer" not in r.__name__ and "Stream" not in r.__name__)
_CORE_DIRECTIVES = frozenset(d.name for d in gqlcore.specified_directives)


def prune(v: Any) -> Any:
    """OPA's pruneIrrelevantGraphQLASTNodes: no Position, no null, no empty array or object."""
    if isinstance(v, list):
        out = []
        for x in v:
            x = prune(x)
            if x is None or (isinstance(x, (list, dict)) and not x):
                continue
            out.append(x)
        return out
    if isinstance(v, dict):
        obj = {}
        for k, x in v.items():
            if k in ("Position", "TypePositions"):
                continue
            x = prune(x)
            if x is None or (isinstance(x, (list, dict)) and not x):
                continue
            obj[k] = x
        return obj
    return v


def gql_error(exc: GQLError) -> BuiltinError:
    """formatGqlParserError: `<message> in GraphQL string at location <line>:<column>`."""
    if exc.line is not None and exc.line >= 0:
        return BuiltinError(f"{exc.message} in GraphQL string at location {exc.line}:{exc.column}")
    return BuiltinError(f"GraphQL parse error: {exc.go_text()}")


def _query(x: Any, pos: int) -> Node:
    if isinstance(x, str):
        try:
            return parse_query(x)
        except GQLError as exc:
            raise gql_error(exc) from None
    if isinstance(x, dict):
        try:
            return query_document(x)
        except DecodeError as exc:
            raise BuiltinError(str(exc)) from None
    raise BuiltinError(f"operand {pos} must be one of {{string, object}} but got {type_name(x)}")


def _schema_doc(x: Any, pos: int) -> Node:
    if isinstance(x, str):
        try:
            return parse_schema(x)
        except GQLError as exc:
            raise gql_error(exc) from None
    if isinstance(x, dict):
        try:
            return schema_document(x)
        except DecodeError as exc:
            raise BuiltinError(str(exc)) from None
    raise BuiltinError(f"operand {pos} must be one of {{string, object}} but got {type_name(x)}")


def _schema(doc: Node) -> Schema:
    """convertSchema: the prelude and the document merged, then validated."""
    prelude = parse_schema(PRELUDE, builtin=True)
    merged = {k: list(prelude.get(k) or []) + list(doc.get(k) or [])
              for k in ("Schema", "SchemaExtension", "Directives", "DirectiveExtensions", "Definitions", "Extensions")}
    try:
        return validate_schema_document(_copy(merged))
    except GQLError as exc:
        raise BuiltinError(f"Error in gqlparser SchemaDocument to Schema conversion: {exc.go_text()}") from None


def _copy(v: Any) -> Any:
    # validation merges extensions into definitions in place: never into the caller's document
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


@lru_cache(maxsize=64)
def _core_schema(sdl: str) -> gqlcore.GraphQLSchema:
    return gqlcore.build_ast_schema(gqlcore.parse(sdl), assume_valid=True, assume_valid_sdl=True)


def _validate(schema: Schema, doc: Node, text: str | None) -> None:
    """validateQuery, on graphql-core: the first error as gqlparser words it."""
    if not doc.get("Operations") and not doc.get("Fragments"):
        return  # gqlparser validates an empty document: nothing to check
    for op in doc.get("Operations") or []:
        if empty_field(op.get("SelectionSet")):
            raise BuiltinError('Cannot query field "" on type "Query" in GraphQL string')
    try:
        query = gqlcore.parse(text) if text is not None else None
    except gqlcore.GraphQLError:
        query = None  # gqlparser syntax graphql-core lacks (descriptions on operations): as printed
    try:
        query = query or gqlcore.parse(query_text(doc))
    except gqlcore.GraphQLError as exc:
        raise BuiltinError(f"GraphQL parse error: {exc.message}") from None
    errors = gqlcore.validate(_core_schema(schema_sdl(schema, _CORE_DIRECTIVES)), query, _RULES)
    if errors:
        raise BuiltinError(_error_list_text(errors))


_REQUIRED = re.compile(r'^Argument "(@?)(?:(\w+)\.)?(\w+)\((\w+):\)" of type "(.+)" is required, but it was not provided\.$')


def _gqlparser_words(message: str) -> str:
    """graphql-core's message as gqlparser words it (double quotes; a missing required argument
    is "Field "f" argument "a" ...")."""
    text = message.replace("'", '"')
    m = _REQUIRED.match(text)
    if m is not None:
        owner = "Directive" if m.group(1) else "Field"
        text = f'{owner} "{m.group(3)}" argument "{m.group(4)}" of type "{m.group(5)}" is required, but it was not provided.'
    return text


def _error_list_text(errors: list[gqlcore.GraphQLError]) -> str:
    """formatGqlParserError over gqlparser's error list: Error() is one `input:L:C: message` line
    per error, and OPA keeps what follows the first location, less a final ".\n"."""
    lines = []
    for e in errors:
        where = f":{e.locations[0].line}:{e.locations[0].column}" if e.locations else ""
        lines.append(f"input{where}: {_gqlparser_words(e.message)}\n")
    text = "".join(lines)
    first = errors[0]
    if not first.locations:
        return f"GraphQL parse error: {text}"
    tail = text.split(":", 3)[3].lstrip(" ").removesuffix(".\n")
    return f"{tail} in GraphQL string at location {first.locations[0].line}:{first.locations[0].column}"


def _parse_and_validate(query: Any, schema: Any) -> tuple[Node, Node]:
    doc = _query(query, 0)
    sdoc = _schema_doc(schema, 1)
    validated = _schema(sdoc)
    _validate(validated, doc, query if isinstance(query, str) else None)
    return prune(doc), prune(sdoc)


@builtin("graphql.parse_query")
def parse_query_builtin(ctx: EvalContext, query: Any) -> Node:
    if not isinstance(query, str):
        raise BuiltinError(f"operand 1 must be string but got {type_name(query)}")
    return prune(_query(query, 1))


@builtin("graphql.parse_schema")
def parse_schema_builtin(ctx: EvalContext, schema: Any) -> Node:
    if not isinstance(schema, str):
        raise BuiltinError(f"operand 1 must be string but got {type_name(schema)}")
    return prune(_schema_doc(schema, 1))


@builtin("graphql.parse")
def parse_builtin(ctx: EvalContext, query: Any, schema: Any) -> list[Node]:
    return list(_parse_and_validate(query, schema))


@builtin("graphql.parse_and_verify")
def parse_and_verify(ctx: EvalContext, query: Any, schema: Any) -> list[Any]:
    try:
        doc, sdoc = _parse_and_validate(query, schema)
    except BuiltinError:
        return [False, {}, {}]
    return [True, doc, sdoc]


@builtin("graphql.is_valid")
def is_valid(ctx: EvalContext, query: Any, schema: Any) -> bool:
    try:
        _parse_and_validate(query, schema)
    except BuiltinError:
        return False
    return True


@builtin("graphql.schema_is_valid")
def schema_is_valid(ctx: EvalContext, schema: Any) -> bool:
    try:
        _schema(_schema_doc(schema, 1))
    except BuiltinError:
        return False
    return True
