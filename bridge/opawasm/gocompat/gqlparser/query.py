"""gqlparser's executable documents (parser/query.go): `parse_query`."""

from __future__ import annotations

from bridge.opawasm.gocompat.gqlparser.lexer import (
    BRACE_L,
    BRACE_R,
    COLON,
    EOF,
    EQUALS,
    KIND_TEXT,
    NAME,
    PAREN_L,
    PAREN_R,
    SPREAD,
)
from bridge.opawasm.gocompat.gqlparser.parser import Description, Node, Parser, join_comments


class QueryParser(Parser):
    def document(self) -> Node:
        doc: Node = {"Operations": [], "Fragments": [], "Comment": None}
        while self.peek().kind != EOF:
            if self.err is not None:
                return doc
            description = self.description()
            tok = self.peek()
            if tok.kind == NAME and tok.value in ("query", "mutation", "subscription"):
                doc["Operations"].append(self.operation(description))
            elif tok.kind == NAME and tok.value == "fragment":
                doc["Fragments"].append(self.fragment_definition(description))
            elif tok.kind == BRACE_L:
                doc["Operations"].append(self.operation(description))
            else:
                self.unexpected()
        return doc

    def operation(self, description: Description) -> Node:
        node: Node = {"Description": "", "Operation": "query", "Name": "", "VariableDefinitions": None,
                      "Directives": None, "SelectionSet": None}
        if self.peek().kind == BRACE_L:
            if description.present:  # the query shorthand takes no description
                self.unexpected(self.prev)
            node["Position"] = self.pos()
            node["SelectionSet"] = self.selection_set()
            # gqlparser reads p.comment in the same composite literal as the selection set's parse,
            # and Go evaluates the call first: what is left after the closing brace (nothing)
            node["Comment"] = self.comment
            return node
        node.update(Description=description.text, Position=self.pos(),
                    Comment=join_comments(description.comment, self.comment))
        tok = self.next()
        if tok.value not in ("query", "mutation", "subscription"):
            self.unexpected(tok)
        node["Operation"] = tok.value if tok.value in ("query", "mutation", "subscription") else ""
        if self.peek().kind == NAME:
            node["Name"] = self.next().value
        node["VariableDefinitions"] = self.variable_definitions()
        node["Directives"] = self.directives(False)
        node["SelectionSet"] = self.selection_set()
        return node

    def variable_definitions(self) -> list[Node]:
        defs: list[Node] = []

        def one() -> None:
            description = self.description()
            node: Node = {"Description": description.text, "Position": self.pos(),
                          "Comment": join_comments(description.comment, self.comment)}
            node["Variable"] = self.variable()
            self.expect(COLON)
            node["Type"] = self.type_reference()
            node["DefaultValue"] = self.value(True) if self.skip(EQUALS) else None
            node.update(Directives=self.directives(False), Definition=None, Used=False)
            defs.append(node)

        self.some(PAREN_L, PAREN_R, one)
        return defs

    def selection_set(self) -> list[Node] | None:
        if self.peek().kind != BRACE_L:
            self.error(self.peek(), f"Expected {{, found {KIND_TEXT[self.peek().kind]}")
            return None
        return self.optional_selection_set()

    def optional_selection_set(self) -> list[Node] | None:
        if not self.enter():
            return None
        try:
            selections: list[Node] = []
            self.some(BRACE_L, BRACE_R, lambda: selections.append(
                self.fragment() if self.peek().kind == SPREAD else self.field()))
            return selections
        finally:
            self.depth -= 1

    def field(self) -> Node:
        node: Node = {"Position": self.pos(), "Comment": self.comment}
        node["Alias"] = alias = self.name()
        node["Name"] = self.name() if self.skip(COLON) else alias
        node["Arguments"] = self.arguments(False)
        node["Directives"] = self.directives(False)
        node["SelectionSet"] = self.optional_selection_set() if self.peek().kind == BRACE_L else None
        node.update(Definition=None, ObjectDefinition=None)
        return node

    def fragment(self) -> Node:
        _, comment = self.expect(SPREAD)
        tok = self.peek()
        if tok.kind == NAME and tok.value != "on":
            pos = self.pos()
            return {"Position": pos, "Comment": comment, "Name": self.fragment_name(),
                    "Directives": self.directives(False), "ObjectDefinition": None, "Definition": None}
        node: Node = {"Position": self.pos(), "Comment": comment, "TypeCondition": ""}
        if self.peek().value == "on":
            self.next()
            node["TypeCondition"] = self.name()
        node["Directives"] = self.directives(False)
        node["SelectionSet"] = self.selection_set()
        node["ObjectDefinition"] = None
        return node

    def fragment_definition(self, description: Description) -> Node:
        node: Node = {"Description": description.text, "Position": self.pos(),
                      "Comment": join_comments(description.comment, self.comment)}
        self.expect_keyword("fragment")
        node["Name"] = self.fragment_name()
        node["VariableDefinition"] = self.variable_definitions()
        self.expect_keyword("on")
        node["TypeCondition"] = self.name()
        node["Directives"] = self.directives(False)
        node["SelectionSet"] = self.selection_set()
        node["Definition"] = None
        return node

    def fragment_name(self) -> str:
        if self.peek().value == "on":
            self.unexpected()
            return ""
        return self.name()


def parse_query(text: str) -> Node:
    """ParseQuery: the QueryDocument, or GQLError (gqlparser's first error)."""
    p = QueryParser(text)
    doc = p.document()
    if p.err is not None:
        raise p.err
    return doc
