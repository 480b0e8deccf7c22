"""gqlparser's parser (parser/parser.go and the shared grammar of query.go): peek/next with its
comment groups, expect, some, many, values, directives, types."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.opawasm.gocompat.gqlparser.lexer import (
    AT,
    BANG,
    BLOCK_STRING,
    BRACE_L,
    BRACE_R,
    BRACKET_L,
    BRACKET_R,
    COLON,
    COMMENT,
    DOLLAR,
    EOF,
    FLOAT,
    INT,
    KIND_TEXT,
    NAME,
    PAREN_L,
    PAREN_R,
    STRING,
    GQLError,
    Lexer,
    Token,
    go_quote,
)

Node = dict[str, Any]
MAX_NESTING = 1000
# gqlparser's ValueKind numbers, as they appear in its AST
VARIABLE, INT_VALUE, FLOAT_VALUE, STRING_VALUE, BLOCK_VALUE, BOOLEAN_VALUE, NULL_VALUE, ENUM_VALUE = range(8)
LIST_VALUE, OBJECT_VALUE = 8, 9


@dataclass
class Description:
    text: str = ""
    comment: Node | None = None
    present: bool = False


def join_comments(before: Node | None, after: Node | None) -> Node | None:
    if before is None:
        return after
    if after is None:
        return before
    return {"List": before["List"] + after["List"]}


class Parser:
    def __init__(self, text: str) -> None:
        self.lexer = Lexer(text)
        self.err: GQLError | None = None
        self.peeked = False
        self.peek_token = Token(EOF, "", 1, 1)
        self.peek_error: GQLError | None = None
        self.prev = Token(EOF, "", 1, 1)
        self.comment: Node | None = None
        self.consuming = False
        self.depth = 0

    # -- tokens (parser.go) ---------------------------------------------------------------------

    def _consume_comment_group(self) -> None:
        if self.err is not None or self.consuming:
            return
        self.consuming = True
        comments = []
        while self.err is None and self.peek().kind == COMMENT:
            tok = self.next()
            comments.append({"Value": tok.value, "Position": (tok.line, tok.column)})
        self.comment = {"List": comments}
        self.consuming = False

    def peek(self) -> Token:
        if self.err is not None:
            return self.prev
        if not self.peeked:
            self.peek_token, self.peek_error = self.lexer.read()
            self.peeked = True
            if self.peek_token.kind == COMMENT:
                self._consume_comment_group()
        return self.peek_token

    def pos(self) -> tuple[int, int] | None:
        if self.err is not None:
            return None
        tok = self.peek()
        return tok.line, tok.column

    def error(self, tok: Token, message: str) -> None:
        if self.err is None:
            self.err = GQLError(message, tok.line, tok.column)

    def next(self) -> Token:
        if self.err is not None:
            return self.prev
        if self.peeked:
            self.peeked = False
            self.comment = None
            self.prev, self.err = self.peek_token, self.peek_error
        else:
            self.prev, self.err = self.lexer.read()
            if self.prev.kind == COMMENT:
                self._consume_comment_group()
        return self.prev

    def expect_keyword(self, value: str) -> tuple[Token, Node | None]:
        tok, comment = self.peek(), self.comment
        if tok.kind == NAME and tok.value == value:
            return self.next(), comment
        self.error(tok, f"Expected {go_quote(value)}, found {tok.describe()}")
        return tok, comment

    def expect(self, kind: int) -> tuple[Token, Node | None]:
        tok, comment = self.peek(), self.comment
        if tok.kind == kind:
            return self.next(), comment
        self.error(tok, f"Expected {KIND_TEXT[kind]}, found {KIND_TEXT[tok.kind]}")
        return tok, comment

    def skip(self, kind: int) -> bool:
        if self.err is not None or self.peek().kind != kind:
            return False
        self.next()
        return True

    def unexpected(self, tok: Token | None = None) -> None:
        tok = self.peek() if tok is None else tok
        self.error(tok, f"Unexpected {tok.describe()}")

    def many(self, start: int, end: int, item: Callable[[], None]) -> None:
        if not self.skip(start):
            return
        while self.peek().kind != end and self.err is None:
            item()
        self.next()

    def some(self, start: int, end: int, item: Callable[[], None]) -> Node | None:
        if not self.skip(start):
            return None
        called = False
        while self.peek().kind != end and self.err is None:
            called = True
            item()
        if not called:
            self.error(self.peek(), f"expected at least one definition, found {KIND_TEXT[self.peek().kind]}")
            return None
        comment = self.comment
        self.next()
        return comment

    def enter(self) -> bool:
        if self.depth >= MAX_NESTING:
            self.error(self.peek(), f"exceeded maximum nesting depth of {MAX_NESTING}")
            return False
        self.depth += 1
        return True

    # -- shared grammar (query.go) --------------------------------------------------------------

    def description(self) -> Description:
        tok = self.peek()
        if tok.kind not in (BLOCK_STRING, STRING):
            return Description()
        comment = self.comment
        return Description(self.next().value, comment, True)

    def name(self) -> str:
        return self.expect(NAME)[0].value

    def variable(self) -> str:
        self.expect(DOLLAR)
        return self.name()

    def value(self, const: bool) -> Node | None:
        tok = self.peek()
        if tok.kind == BRACKET_L:
            return self._composite(const, BRACKET_L, BRACKET_R, LIST_VALUE)
        if tok.kind == BRACE_L:
            return self._composite(const, BRACE_L, BRACE_R, OBJECT_VALUE)
        if tok.kind == DOLLAR:
            if const:
                self.unexpected()
                return None
            # Go reads p.comment after the call in the same composite literal: after the name
            return value_node(self.variable(), VARIABLE, self.comment, (tok.line, tok.column))
        kinds = {INT: INT_VALUE, FLOAT: FLOAT_VALUE, STRING: STRING_VALUE, BLOCK_STRING: BLOCK_VALUE}
        if tok.kind in kinds:
            kind = kinds[tok.kind]
        elif tok.kind == NAME:
            kind = {"true": BOOLEAN_VALUE, "false": BOOLEAN_VALUE, "null": NULL_VALUE}.get(tok.value, ENUM_VALUE)
        else:
            self.unexpected()
            return None
        self.next()
        return value_node(tok.value, kind, self.comment, (tok.line, tok.column))

    def _composite(self, const: bool, start: int, end: int, kind: int) -> Node | None:
        if not self.enter():
            return None
        try:
            children: list[Node] = []
            pos, comment = self.pos(), self.comment
            if kind == LIST_VALUE:
                self.many(start, end, lambda: children.append(
                    {"Name": "", "Value": self.value(const), "Comment": None}))
            else:
                self.many(start, end, lambda: children.append(self._object_field(const)))
            node = value_node("", kind, comment, pos)
            node["Children"] = children
            return node
        finally:
            self.depth -= 1

    def _object_field(self, const: bool) -> Node:
        pos, comment = self.pos(), self.comment
        name = self.name()
        self.expect(COLON)
        return {"Name": name, "Value": self.value(const), "Comment": comment, "Position": pos}

    def directives(self, const: bool) -> list[Node]:
        out = []
        while self.peek().kind == AT and self.err is None:
            self.expect(AT)
            pos = self.pos()
            out.append({"Name": self.name(), "Arguments": self.arguments(const), "ParentDefinition": None,
                        "Definition": None, "Location": "", "Position": pos})
        return out

    def arguments(self, const: bool) -> list[Node]:
        args: list[Node] = []

        def one() -> None:
            pos, comment = self.pos(), self.comment
            name = self.name()
            self.expect(COLON)
            args.append({"Name": name, "Value": self.value(const), "Comment": comment, "Position": pos})

        self.some(PAREN_L, PAREN_R, one)
        return args

    def type_reference(self) -> Node | None:
        node: Node = {"NamedType": "", "Elem": None, "NonNull": False}
        if self.skip(BRACKET_L):
            if not self.enter():
                return None
            try:
                node["Position"] = self.pos()
                node["Elem"] = self.type_reference()
                self.expect(BRACKET_R)
            finally:
                self.depth -= 1
        else:
            node["Position"] = self.pos()
            node["NamedType"] = self.name()
        if self.skip(BANG):
            node["NonNull"] = True
        return node


def value_node(raw: str, kind: int, comment: Node | None, pos: tuple[int, int] | None) -> Node:
    return {"Raw": raw, "Children": None, "Kind": kind, "Comment": comment, "Definition": None,
            "VariableDefinition": None, "ExpectedType": None, "ExpectedTypeHasDefault": False, "Position": pos}
