"""vektah/gqlparser (v2.5.64), the GraphQL library OPA's graphql.* builtins stand on: its lexer,
its parser and its schema validation, ported so that the builtins give OPA's exact answers.

Why a port and not graphql-core's parser: the builtins return gqlparser's AST *as data* (its Go
structs through JSON: `Alias` set to the name, `Kind` as gqlparser's number, comments attached
where gqlparser attaches them, raw literal text), and a schema is valid when gqlparser says so
(it accepts, for one, extensions of types that are never defined). Queries are validated by
graphql-core (`builtins/graphql.py`) against the schema this package has validated.

Nodes are plain dicts with gqlparser's Go field names; `Position` holds `(line, column)` for
error messages and is dropped, as OPA drops it, before a node is returned to a policy.
"""

from bridge.opawasm.gocompat.gqlparser.lexer import GQLError
from bridge.opawasm.gocompat.gqlparser.query import parse_query
from bridge.opawasm.gocompat.gqlparser.schema import parse_schema
from bridge.opawasm.gocompat.gqlparser.validator import Schema, validate_schema_document

__all__ = ["GQLError", "Schema", "parse_query", "parse_schema", "validate_schema_document"]
