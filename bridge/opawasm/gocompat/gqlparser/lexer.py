"""gqlparser's lexer: tokens with gqlparser's kinds and positions (line, column in runes), and its
error messages."""

from __future__ import annotations

from dataclasses import dataclass

# token kinds, in gqlparser's order; the text is how an error message names the kind
INVALID, EOF, BANG, DOLLAR, AMP, PAREN_L, PAREN_R, SPREAD, COLON, EQUALS, AT = range(11)
BRACKET_L, BRACKET_R, BRACE_L, BRACE_R, PIPE, NAME, INT, FLOAT, STRING, BLOCK_STRING, COMMENT = range(11, 22)
KIND_TEXT = ("<Invalid>", "<EOF>", "!", "$", "&", "(", ")", "...", ":", "=", "@", "[", "]", "{", "}", "|",
             "Name", "Int", "Float", "String", "BlockString", "Comment")
_PUNCT = {"!": BANG, "$": DOLLAR, "&": AMP, "(": PAREN_L, ")": PAREN_R, ":": COLON, "=": EQUALS, "@": AT,
          "[": BRACKET_L, "]": BRACKET_R, "{": BRACE_L, "}": BRACE_R, "|": PIPE}
_NAME_START = frozenset("_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_NAME_CHARS = _NAME_START | frozenset("0123456789")
_HEX = "0123456789abcdefABCDEF"


class GQLError(Exception):
    """gqlparser's gqlerror.Error: a message and where (None: no location)."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column

    def go_text(self) -> str:
        """Error() as Go prints it: `input:<line>:<column>: <message>`."""
        where = f":{self.line}:{self.column}" if self.line is not None else ":-1:-1"
        return f"input{where}: {self.message}"


@dataclass
class Token:
    kind: int
    value: str
    line: int
    column: int

    def describe(self) -> str:
        """Token.String(): the kind, and the value quoted as Go quotes it."""
        if self.value:
            return f"{KIND_TEXT[self.kind]} {go_quote(self.value)}"
        return KIND_TEXT[self.kind]


def go_quote(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out) + '"'


class Lexer:
    def __init__(self, text: str) -> None:
        self.s = text
        self.start = self.end = 0
        self.line = 1
        self.line_start = 0

    def _token(self, kind: int, value: str | None = None) -> tuple[Token, None]:
        v = self.s[self.start : self.end] if value is None else value
        return Token(kind, v, self.line, self.start - self.line_start + 1), None

    def _error(self, message: str) -> tuple[Token, GQLError]:
        column = self.end - self.line_start + 1
        return Token(INVALID, "", self.line, column), GQLError(message, self.line, column)

    def read(self) -> tuple[Token, GQLError | None]:
        self._ws()
        self.start = self.end
        s = self.s
        if self.end >= len(s):
            return self._token(EOF)
        c = s[self.start]
        self.end += 1
        if c in _PUNCT:
            return self._token(_PUNCT[c], "")
        if c == "." and s.startswith("...", self.start):
            self.end += 2
            return self._token(SPREAD, "")
        if c == "#":
            return self._comment()
        if c in _NAME_START:
            while self.end < len(s) and s[self.end] in _NAME_CHARS:
                self.end += 1
            return self._token(NAME)
        if c == "-" or (c.isascii() and c.isdigit()):
            return self._number()
        if c == '"':
            return self._block_string() if s.startswith('"""', self.start) else self._string()
        self.end -= 1
        if ord(c) < 0x20 and c not in "\t\n\r":
            return self._error(f'Cannot contain the invalid character "\\u{ord(c):04x}"')
        if c == "'":
            return self._error("Unexpected single quote character ('), did you mean to use a double quote (\")?")
        return self._error(f'Cannot parse the unexpected character "{c}".')

    def _ws(self) -> None:
        s = self.s
        while self.end < len(s):
            c = s[self.end]
            if c in "\t ,\ufeff":
                self.end += 1
            elif c == "\n" or c == "\r":
                self.end += 1
                if c == "\r" and self.end < len(s) and s[self.end] == "\n":
                    self.end += 1
                self.line += 1
                self.line_start = self.end
            else:
                return

    def _comment(self) -> tuple[Token, None]:
        s = self.s
        while self.end < len(s) and (ord(s[self.end]) > 0x1F or s[self.end] == "\t"):
            self.end += 1
        return self._token(COMMENT)

    def _digits(self) -> int:
        n = 0
        while self.end < len(self.s) and "0" <= self.s[self.end] <= "9":
            self.end += 1
            n += 1
        return n

    def _accept(self, chars: str) -> bool:
        if self.end < len(self.s) and self.s[self.end] in chars:
            self.end += 1
            return True
        return False

    def _next_text(self) -> str:
        return f'"{self.s[self.end]}"' if self.end < len(self.s) else "<EOF>"

    def _number(self) -> tuple[Token, GQLError | None]:
        self.end -= 1
        is_float = False
        self._accept("-")
        if self._accept("0"):
            n = self._digits()
            if n:
                self.end -= n
                return self._error(f"Invalid number, unexpected digit after 0: {self._next_text()}.")
        elif not self._digits():
            return self._error(f"Invalid number, expected digit but got: {self._next_text()}.")
        if self._accept("."):
            is_float = True
            if not self._digits():
                return self._error(f"Invalid number, expected digit but got: {self._next_text()}.")
        if self._accept("eE"):
            is_float = True
            self._accept("-+")
            if not self._digits():
                return self._error(f"Invalid number, expected digit but got: {self._next_text()}.")
        return self._token(FLOAT if is_float else INT)

    def _string(self) -> tuple[Token, GQLError | None]:
        s, n = self.s, len(self.s)
        self.start += 1
        out: list[str] = []
        while self.end < n:
            c = s[self.end]
            if c in "\n\r":
                break
            if ord(c) < 0x20 and c != "\t":
                return self._error(f'Invalid character within String: "\\u{ord(c):04x}".')
            if c == '"':
                tok, _ = self._token(STRING, "".join(out))
                self.end += 1
                return tok, None
            if c != "\\":
                out.append(c)
                self.end += 1
                continue
            err = self._escape(out)
            if err is not None:
                return err
        return self._error("Unterminated string.")

    def _escape(self, out: list[str]) -> tuple[Token, GQLError] | None:
        s, n = self.s, len(self.s)
        if self.end + 1 >= n:
            self.end += 1
            return self._error("Invalid character escape sequence.")
        esc = s[self.end + 1]
        simple = {'"': '"', "/": "/", "\\": "\\", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
        if esc in simple:
            out.append(simple[esc])
            self.end += 2
            return None
        if esc != "u":
            self.end += 1
            return self._error(f"Invalid character escape sequence: \\{esc}.")
        if self.end + 2 < n and s[self.end + 2] == "{":
            return self._braced_escape(out)
        if self.end + 6 >= n:
            self.end += 1
            return self._error(f"Invalid character escape sequence: \\{s[self.end:]}.")
        digits = s[self.end + 2 : self.end + 6]
        if not all(d in _HEX for d in digits):
            self.end += 1
            return self._error(f"Invalid character escape sequence: \\{s[self.end : self.end + 5]}.")
        r = int(digits, 16)
        self.end += 6
        nxt = s[self.end : self.end + 6]
        if 0xD800 <= r < 0xDC00 and self.end + 6 < n and nxt[:2] == "\\u" and all(d in _HEX for d in nxt[2:]):
            r2 = int(nxt[2:], 16)
            if 0xDC00 <= r2 <= 0xDFFF:
                r = 0x10000 + ((r - 0xD800) << 10) + (r2 - 0xDC00)
                self.end += 6
        out.append(chr(r) if not 0xD800 <= r <= 0xDFFF else "\ufffd")
        return None

    def _braced_escape(self, out: list[str]) -> tuple[Token, GQLError] | None:
        s = self.s
        rest = s[self.end + 3 :]
        v, i = 0, 0
        while i < len(rest) and i <= 8:
            if rest[i] == "}":
                i += 1
                if i > 1 and v <= 0x10FFFF and not 0xD800 <= v <= 0xDFFF:
                    out.append(chr(v))
                    self.end += 3 + i
                    return None
                break
            if rest[i] not in _HEX:
                break
            v = v << 4 | int(rest[i], 16)
            i += 1
        self.end += 1
        return self._error(f"Invalid character escape sequence: \\{s[self.end : self.end + 2 + i]}.")

    def _block_string(self) -> tuple[Token, GQLError | None]:
        s, n = self.s, len(self.s)
        self.start += 3
        self.end += 2
        buf: list[str] = []
        while self.end < n:
            c = s[self.end]
            if c == '"':
                q = self.end
                while q < n and s[q] == '"':
                    q += 1
                count = q - self.end
                if count >= 3:
                    buf.append('"' * (count - 3))
                    tok, _ = self._token(BLOCK_STRING, block_string_value("".join(buf)))
                    self.end += count
                    return tok, None
            if ord(c) < 0x20 and c not in "\t\n\r":
                return self._error(f'Invalid character within String: "\\u{ord(c):04x}".')
            if c == "\\" and s.startswith('\\"""', self.end):
                buf.append('"""')
                self.end += 4
            elif c == "\r":
                self.end += 2 if s.startswith("\r\n", self.end) else 1
                buf.append("\n")
                self.line += 1
                self.line_start = self.end
            else:
                buf.append(c)
                self.end += 1
                if c == "\n":
                    self.line += 1
                    self.line_start = self.end
        return self._error("Unterminated string.")


def _indent(line: str) -> int | None:
    for i, ch in enumerate(line):
        if ch not in " \t":
            return i
    return None


def block_string_value(raw: str) -> str:
    """The value of a block string: common indentation removed (the first line counts when
    measuring it, but keeps its own), blank first and last lines dropped."""
    lines = raw.split("\n")
    common: int | None = None
    for line in lines:
        ind = _indent(line)
        if ind is not None and (common is None or ind < common):
            common = ind
            if common == 0:
                break
    if common is not None:
        lines = [lines[0]] + [line[common:] if len(line) >= common else "" for line in lines[1:]]
    start, end = 0, len(lines)
    while start < end and _indent(lines[start]) is None:
        start += 1
    while start < end and _indent(lines[end - 1]) is None:
        end -= 1
    return "\n".join(lines[start:end])
