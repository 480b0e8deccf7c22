"""`regex.globs_match`: do two "globs" (the restricted regex dialect of glob-intersection:
`.`, `[...]` classes, `*`/`+` on the previous token, `\\` escapes) match a common string?

Decided on the product of the two token sequences: a state is a pair of positions; both sides
consume one character when their tokens can match the same character; a starred token may be
skipped or stay put after consuming.
"""

from __future__ import annotations

from bridge.opawasm.errors import BuiltinError

# a matcher is ("any",) | ("lit", ch) | ("cls", negated, [(lo, hi), ...])


def _tokens(g: str) -> list[tuple[tuple, str]]:
    toks: list[tuple[tuple, str]] = []
    i, n = 0, len(g)
    while i < n:
        c = g[i]
        if c == "*" or c == "+":
            if not toks or toks[-1][1] != "1":
                raise BuiltinError(f"invalid glob {g!r}: quantifier without a preceding token")
            m, _ = toks[-1]
            if c == "*":
                toks[-1] = (m, "*")
            else:
                toks.append((m, "*"))
            i += 1
            continue
        if c == ".":
            toks.append((("any",), "1"))
            i += 1
        elif c == "\\":
            if i + 1 >= n:
                raise BuiltinError(f"invalid glob {g!r}: trailing escape")
            toks.append((("lit", g[i + 1]), "1"))
            i += 2
        elif c == "[":
            j = i + 1
            neg = False  # glob-intersection has no negated classes: "^" is a member like any other
            ranges: list[tuple[str, str]] = []
            while j < n and g[j] != "]":
                ch = g[j]
                if ch == "\\" and j + 1 < n:
                    j += 1
                    ch = g[j]
                if j + 2 < n and g[j + 1] == "-" and g[j + 2] == "]":
                    raise BuiltinError(f"invalid glob {g!r}: incomplete range in character class")
                if j + 2 < n and g[j + 1] == "-" and g[j + 2] != "]":
                    ranges.append((ch, g[j + 2]))
                    j += 3
                else:
                    ranges.append((ch, ch))
                    j += 1
            if j >= n:
                raise BuiltinError(f"invalid glob {g!r}: unterminated character class")
            toks.append((("cls", neg, ranges), "1"))
            i = j + 1
        else:
            toks.append((("lit", c), "1"))
            i += 1
    return toks


def _contains(m: tuple, ch: str) -> bool:
    if m[0] == "any":
        return True
    if m[0] == "lit":
        return m[1] == ch
    inside = any(lo <= ch <= hi for lo, hi in m[2])
    return inside != m[1]


def _overlap(a: tuple, b: tuple) -> bool:
    if a[0] == "any" or b[0] == "any":
        return True
    if a[0] == "lit":
        return _contains(b, a[1])
    if b[0] == "lit":
        return _contains(a, b[1])
    # two classes: try the boundary characters of every range and a few probes
    probes = {c for m in (a, b) for lo, hi in m[2] for c in (lo, hi)} | {"a", "0", "A", " ", "_", "\x00", "\uffff"}
    return any(_contains(a, c) and _contains(b, c) for c in probes)


def non_empty(g1: str, g2: str) -> bool:
    """As glob-intersection decides it: a common string of at least one character, or two empty
    globs (two globs that only share the empty string, like `a*` and `b*`, do not intersect)."""
    t1, t2 = _tokens(g1), _tokens(g2)
    n1, n2 = len(t1), len(t2)
    if n1 == 0 and n2 == 0:
        return True
    seen = set()
    stack = [(0, 0, False)]
    while stack:
        st = stack.pop()
        if st in seen:
            continue
        seen.add(st)
        i, j, consumed = st
        if i == n1 and j == n2 and consumed:
            return True
        if i < n1 and t1[i][1] == "*":
            stack.append((i + 1, j, consumed))
        if j < n2 and t2[j][1] == "*":
            stack.append((i, j + 1, consumed))
        if i < n1 and j < n2 and _overlap(t1[i][0], t2[j][0]):
            stack.append((i if t1[i][1] == "*" else i + 1, j if t2[j][1] == "*" else j + 1, True))
    return False
