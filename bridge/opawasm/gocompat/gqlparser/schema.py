"""gqlparser's schema parser (parser/schema.go): `parse_schema`."""

from __future__ import annotations

from bridge.opawasm.gocompat.gqlparser.lexer import (
    AMP,
    AT,
    BLOCK_STRING,
    BRACE_L,
    BRACE_R,
    COLON,
    EOF,
    EQUALS,
    NAME,
    PAREN_L,
    PAREN_R,
    PIPE,
    STRING,
)
from bridge.opawasm.gocompat.gqlparser.parser import Description, Node, Parser

_TYPE_KINDS = {"scalar": "SCALAR", "type": "OBJECT", "interface": "INTERFACE", "union": "UNION", "enum": "ENUM",
               "input": "INPUT_OBJECT"}
LOCATIONS = frozenset({
    "QUERY", "MUTATION", "SUBSCRIPTION", "FIELD", "FRAGMENT_DEFINITION", "FRAGMENT_SPREAD", "INLINE_FRAGMENT",
    "VARIABLE_DEFINITION", "SCHEMA", "SCALAR", "OBJECT", "FIELD_DEFINITION", "ARGUMENT_DEFINITION", "INTERFACE",
    "UNION", "ENUM", "ENUM_VALUE", "INPUT_OBJECT", "INPUT_FIELD_DEFINITION", "DIRECTIVE_DEFINITION",
})


def definition(kind: str, pos: tuple[int, int] | None, before: Node | None, text: str, after: Node | None) -> Node:
    return {"Kind": kind, "Description": text, "Name": "", "Directives": None, "Interfaces": None, "Fields": None,
            "Types": None, "EnumValues": None, "BuiltIn": False, "Position": pos, "TypePositions": None,
            "BeforeDescriptionComment": before, "AfterDescriptionComment": after, "EndOfDefinitionComment": None}


class SchemaParser(Parser):
    def document(self) -> Node | None:
        doc: Node = {"Schema": [], "SchemaExtension": [], "Directives": [], "DirectiveExtensions": [],
                     "Definitions": [], "Extensions": [], "Comment": None}
        while self.peek().kind != EOF:
            if self.err is not None:
                return None
            description = Description()
            if self.peek().kind in (BLOCK_STRING, STRING):
                description = self.description()
            tok = self.peek()
            if tok.kind != NAME:
                self.unexpected()
                break
            if tok.value in _TYPE_KINDS:
                doc["Definitions"].append(self.type_definition(tok.value, description))
            elif tok.value == "schema":
                doc["Schema"].append(self.schema_definition(description))
            elif tok.value == "directive":
                doc["Directives"].append(self.directive_definition(description))
            elif tok.value == "extend":
                if description.text != "":
                    self.unexpected(self.prev)
                self.extension(doc)
            else:
                self.unexpected()
                return None
        doc["Comment"] = self.comment  # the comments at the end of the document
        return doc

    def operation_types(self) -> tuple[list[Node], Node | None]:
        ops: list[Node] = []

        def one() -> None:
            pos, comment = self.pos(), self.comment
            tok = self.next()
            if tok.value not in ("query", "mutation", "subscription"):
                self.unexpected(tok)
            self.expect(COLON)
            op = tok.value if tok.value in ("query", "mutation", "subscription") else ""
            ops.append({"Operation": op, "Type": self.name(), "Comment": comment, "Position": pos})

        end = self.some(BRACE_L, BRACE_R, one)
        return ops, end

    def schema_definition(self, description: Description) -> Node:
        _, comment = self.expect_keyword("schema")
        node: Node = {"Position": self.pos(), "BeforeDescriptionComment": description.comment,
                      "Description": description.text, "AfterDescriptionComment": comment}
        node["Directives"] = self.directives(True)
        node["OperationTypes"], node["EndOfDefinitionComment"] = self.operation_types()
        return node

    def type_definition(self, keyword: str, description: Description) -> Node:
        _, comment = self.expect_keyword(keyword)
        node = definition(_TYPE_KINDS[keyword], self.pos(), description.comment, description.text, comment)
        node["Name"] = self.name()
        self._type_body(node, keyword)
        return node

    def _type_body(self, node: Node, keyword: str) -> None:
        if keyword in ("type", "interface"):
            node["Interfaces"] = self.implements()
        node["Directives"] = self.directives(keyword != "input" or not node.get("_extension"))
        node.pop("_extension", None)
        if keyword in ("type", "interface"):
            node["Fields"], node["EndOfDefinitionComment"] = self.fields(self.field_definition)
        elif keyword == "union":
            node["Types"], node["TypePositions"] = self.union_members()
        elif keyword == "enum":
            node["EnumValues"], node["EndOfDefinitionComment"] = self.fields(self.enum_value)
        elif keyword == "input":
            node["Fields"], node["EndOfDefinitionComment"] = self.fields(self.input_value)

    def implements(self) -> list[str]:
        names: list[str] = []
        if self.peek().value == "implements":
            self.next()
            self.skip(AMP)  # an optional leading ampersand
            names.append(self.name())
            while self.skip(AMP) and self.err is None:
                names.append(self.name())
        return names

    def fields(self, parse_one: object) -> tuple[list[Node], Node | None]:
        out: list[Node] = []
        end = self.some(BRACE_L, BRACE_R, lambda: out.append(parse_one()))  # type: ignore[operator]
        return out, end

    def _described(self) -> Node:
        desc = self.description()
        node: Node = {"Description": "", "BeforeDescriptionComment": None}
        if desc.text != "":
            node.update(Description=desc.text, BeforeDescriptionComment=desc.comment)
        self.peek()  # peek to set the comment
        node["AfterDescriptionComment"] = self.comment
        node["Position"] = self.pos()
        node["Name"] = self.name()
        return node

    def field_definition(self) -> Node:
        node = self._described()
        node["Arguments"] = self.argument_definitions()
        self.expect(COLON)
        node.update(Type=self.type_reference(), DefaultValue=None, Directives=self.directives(True))
        return node

    def argument_definitions(self) -> list[Node]:
        args: list[Node] = []
        self.some(PAREN_L, PAREN_R, lambda: args.append(self.input_value()))
        return args

    def input_value(self) -> Node:
        node = self._described()
        self.expect(COLON)
        node["Type"] = self.type_reference()
        node["DefaultValue"] = self.value(True) if self.skip(EQUALS) else None
        node["Directives"] = self.directives(True)
        return node

    def enum_value(self) -> Node:
        node = self._described()
        node["Directives"] = self.directives(True)
        return node

    def union_members(self) -> tuple[list[str], list[tuple[int, int] | None]]:
        types: list[str] = []
        positions: list[tuple[int, int] | None] = []
        if self.skip(EQUALS):
            self.skip(PIPE)  # an optional leading pipe
            positions.append(self.pos())
            types.append(self.name())
            while self.skip(PIPE) and self.err is None:
                positions.append(self.pos())
                types.append(self.name())
        return types, positions

    def extension(self, doc: Node) -> None:
        _, comment = self.expect_keyword("extend")
        keyword = self.peek().value
        if keyword == "schema":
            doc["SchemaExtension"].append(self.schema_extension(comment))
        elif keyword in _TYPE_KINDS:
            doc["Extensions"].append(self.type_extension(keyword, comment))
        elif keyword == "directive":
            doc["DirectiveExtensions"].append(self.directive_extension(comment))
        else:
            self.unexpected()

    def schema_extension(self, comment: Node | None) -> Node:
        self.expect_keyword("schema")
        node: Node = {"Position": self.pos(), "Description": "", "BeforeDescriptionComment": None,
                      "AfterDescriptionComment": comment}
        node["Directives"] = self.directives(True)
        node["OperationTypes"], node["EndOfDefinitionComment"] = self.operation_types()
        if not node["Directives"] and not node["OperationTypes"]:
            self.unexpected()
        return node

    def type_extension(self, keyword: str, comment: Node | None) -> Node:
        self.expect_keyword(keyword)
        node = definition(_TYPE_KINDS[keyword], self.pos(), None, "", comment)
        node["Name"] = self.name()
        node["_extension"] = True  # an input extension reads non-const directives (gqlparser)
        self._type_body(node, keyword)
        parts = {"scalar": ("Directives",), "type": ("Interfaces", "Directives", "Fields"),
                 "interface": ("Interfaces", "Directives", "Fields"), "union": ("Directives", "Types"),
                 "enum": ("Directives", "EnumValues"), "input": ("Directives", "Fields")}[keyword]
        if not any(node[p] for p in parts):
            self.unexpected()
        return node

    def directive_definition(self, description: Description) -> Node:
        _, comment = self.expect_keyword("directive")
        self.expect(AT)
        node: Node = {"Position": self.pos(), "BeforeDescriptionComment": description.comment,
                      "Description": description.text, "AfterDescriptionComment": comment}
        node["Name"] = self.name()
        node["Arguments"] = self.argument_definitions()
        node["Directives"] = self.directives(True)
        node["IsRepeatable"] = False
        tok = self.peek()
        if tok.kind == NAME and tok.value == "repeatable":
            node["IsRepeatable"] = True
            self.skip(NAME)
        self.expect_keyword("on")
        self.skip(PIPE)
        node["Locations"] = [self.location()]
        while self.skip(PIPE) and self.err is None:
            node["Locations"].append(self.location())
        return node

    def location(self) -> str:
        tok, _ = self.expect(NAME)
        if tok.value in LOCATIONS:
            return tok.value
        self.unexpected(tok)
        return ""

    def directive_extension(self, comment: Node | None) -> Node:
        self.expect_keyword("directive")
        self.expect(AT)
        node: Node = {"Position": self.pos(), "Description": "", "BeforeDescriptionComment": None,
                      "AfterDescriptionComment": comment, "Name": self.name(), "Arguments": None,
                      "Locations": None, "IsRepeatable": False}
        node["Directives"] = self.directives(True)
        if not node["Directives"]:
            self.unexpected()
        return node


def parse_schema(text: str, *, builtin: bool = False) -> Node:
    """ParseSchema: the SchemaDocument, or GQLError (gqlparser's first error)."""
    p = SchemaParser(text)
    doc = p.document()
    if p.err is not None or doc is None:
        raise p.err if p.err is not None else AssertionError("no document and no error")
    for d in doc["Definitions"] + doc["Extensions"]:
        d["BuiltIn"] = builtin
    return doc
