"""String, regex, glob and printing builtins (topdown strings.go, regex.go, glob.go, trace.go, print.go)."""

from __future__ import annotations

from typing import Any

from bridge.opawasm.builtins.globsect import non_empty
from bridge.opawasm.builtins.operands import need_int, need_str, type_name
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.errors import BuiltinError, HaltError
from bridge.opawasm.gocompat.errors import GoError, TooLarge
from bridge.opawasm.gocompat.fmt import sprintf as go_sprintf
from bridge.opawasm.gocompat.fmt import sprintf_plain
from bridge.opawasm.gocompat.regexp import Regexp, compile_go, quote_meta
from bridge.opawasm.gocompat.regexp import split as go_split_regexp
from bridge.opawasm.values import RegoSet, rego_repr


def go_regexp(ctx: EvalContext, pattern: str) -> Regexp:
    try:
        return compile_go(pattern)
    except GoError as exc:
        raise BuiltinError(str(exc)) from None


@builtin("regex.replace")
def regex_replace(ctx: EvalContext, s: Any, pattern: Any, value: Any) -> str:
    s, pattern, value = need_str(s, 1), need_str(pattern, 2), need_str(value, 3)
    rx = go_regexp(ctx, pattern)

    def check(size: int) -> None:
        # a short pattern and a long replacement multiply: account before the text grows
        ctx.check_deadline()
        ctx.check_size(size, "regex.replace")

    return rx.replace_all(s.encode("utf-8"), value.encode("utf-8"), check).decode("utf-8", "replace")


@builtin("regex.split")
def regex_split(ctx: EvalContext, pattern: Any, s: Any) -> list[str]:
    pattern, s = need_str(pattern, 1), need_str(s, 2)
    return go_split_regexp(go_regexp(ctx, pattern), s, -1)


@builtin("regex.find_n")
def regex_find_n(ctx: EvalContext, pattern: Any, s: Any, n: Any) -> list[str]:
    pattern, s, n = need_str(pattern, 1), need_str(s, 2), need_int(n, 3)
    b = s.encode("utf-8")
    return [b[m[0][0] : m[0][1]].decode("utf-8", "replace") for m in go_regexp(ctx, pattern).all_matches(b, n)]


@builtin("regex.find_all_string_submatch_n")
def regex_find_all_submatch(ctx: EvalContext, pattern: Any, s: Any, n: Any) -> list[list[str]]:
    pattern, s, n = need_str(pattern, 1), need_str(s, 2), need_int(n, 3)
    b = s.encode("utf-8")
    return [[b[a:z].decode("utf-8", "replace") if a >= 0 else "" for a, z in m]
            for m in go_regexp(ctx, pattern).all_matches(b, n)]


def _delimiter_indices(s: str, start: str, end: str) -> list[int]:
    level = idx = 0
    idxs: list[int] = []
    for i, ch in enumerate(s):
        if ch == start:
            level += 1
            if level == 1:
                idx = i
        elif ch == end:
            level -= 1
            if level == 0:
                idxs += [idx, i + 1]
            elif level < 0:
                raise BuiltinError(f'unbalanced braces in "{s}"')
    if level != 0:
        raise BuiltinError(f'unbalanced braces in "{s}"')
    return idxs


@builtin("regex.template_match")
def regex_template_match(ctx: EvalContext, template: Any, value: Any, dstart: Any, dend: Any) -> bool:
    template, value = need_str(template, 1), need_str(value, 2)
    dstart, dend = need_str(dstart, 3), need_str(dend, 4)
    ds, de = dstart[:1] or "{", dend[:1] or "}"
    idxs = _delimiter_indices(template, ds, de)
    pat = ["^"]
    end = 0
    for i in range(0, len(idxs), 2):
        raw = template[end : idxs[i]]
        end = idxs[i + 1]
        sub = template[idxs[i] + 1 : end - 1]
        go_regexp(ctx, f"^{sub}$")
        pat.append(f"{quote_meta(raw)}({sub})")
    pat.append(quote_meta(template[end:]))
    pat.append("$")
    return go_regexp(ctx, "".join(pat)).search(value)


@builtin("regex.globs_match")
def regex_globs_match(ctx: EvalContext, g1: Any, g2: Any) -> bool:
    return non_empty(need_str(g1, 1), need_str(g2, 2))


# -- strings ------------------------------------------------------------------------------------


@builtin("sprintf")
def sprintf(ctx: EvalContext, fmt: Any, args: Any) -> str:
    fmt = need_str(fmt, 1)
    if not isinstance(args, (list, tuple)):
        raise BuiltinError(f"operand 2 must be array but got {type_name(args)}")
    plain = sprintf_plain(fmt, args)
    if plain is not None:
        return plain
    try:
        return go_sprintf(fmt, sprintf_args(args), ctx.memory_limit)
    except TooLarge as exc:
        ctx.check_size(exc.nbytes, "sprintf")
        raise


_GO_OPERANDS = (int, float, str)


def sprintf_args(values: list[Any] | tuple[Any, ...]) -> list[Any]:
    """topdown's conversion of Rego operands to Go fmt operands: numbers and strings as they are,
    anything else as its Rego text."""
    return [v if type(v) in _GO_OPERANDS else _go_operand(v) for v in values]


def _go_operand(v: Any) -> Any:
    return v if isinstance(v, _GO_OPERANDS) and not isinstance(v, bool) else rego_repr(v)


@builtin("strings.any_prefix_match")
def any_prefix_match(ctx: EvalContext, search: Any, base: Any) -> bool:
    return _affix(search, base, str.startswith)


@builtin("strings.any_suffix_match")
def any_suffix_match(ctx: EvalContext, search: Any, base: Any) -> bool:
    return _affix(search, base, str.endswith)


def _affix(search: Any, base: Any, match: Any) -> bool:
    strs, bases = _strings(search, 1), _strings(base, 2)
    return any(match(s, b) for s in strs for b in bases)


def _strings(v: Any, pos: int) -> list[str]:
    """topdown's operand for any_prefix/suffix_match: a string, or an array or set of strings."""
    if isinstance(v, str):
        return [v]
    if not isinstance(v, (list, tuple, RegoSet)):
        raise BuiltinError(f"operand {pos} must be one of {{string, set, array}} but got {type_name(v)}")
    items = list(v)
    for x in items:
        if not isinstance(x, str):
            kind = "array" if isinstance(v, (list, tuple)) else "set"
            raise BuiltinError(f"operand {pos} must be {kind} of strings but got {kind} containing {type_name(x)}")
    return items


def go_split(s: str, sep: str, limit: int = -1) -> list[str]:
    """Go's strings.SplitN: at most `limit` parts (all when negative); "" splits into characters."""
    if limit == 0:
        return []
    if sep == "":
        chars = list(s)
        if 0 < limit < len(chars):
            return [*chars[: limit - 1], "".join(chars[limit - 1 :])]
        return chars
    return s.split(sep, limit - 1) if limit > 0 else s.split(sep)


@builtin("strings.split_n")
def split_n(ctx: EvalContext, s: Any, delimiter: Any, n: Any) -> list[str]:
    """The first n parts (n > 0), the last -n parts (n < 0), none (n == 0); topdown's SplitN."""
    s, delimiter, n = need_str(s, 1), need_str(delimiter, 2), need_int(n, 3)
    if n >= 0:
        return go_split(s, delimiter, n + 1)[:n]
    parts = go_split(s, delimiter)
    return parts[max(len(parts) + n, 0) :]


@builtin("strings.count")
def strings_count(ctx: EvalContext, s: Any, sub: Any) -> int:
    return need_str(s, 1).count(need_str(sub, 2))


@builtin("indexof_n")
def indexof_n(ctx: EvalContext, s: Any, sub: Any) -> list[int]:
    s, sub = need_str(s, 1), need_str(sub, 2)
    if sub == "":
        raise BuiltinError("empty search character")
    out, i = [], s.find(sub)
    while i >= 0:
        out.append(i)
        i = s.find(sub, i + 1)
    return out


@builtin("glob.quote_meta")
def glob_quote_meta(ctx: EvalContext, s: Any) -> str:
    s = need_str(s, 1)
    return "".join("\\" + c if c in "*?\\[]{}" else c for c in s)


@builtin("trace")
def trace(ctx: EvalContext, note: Any) -> bool:
    need_str(note, 1)
    return True


@builtin("internal.print")
def internal_print(ctx: EvalContext, operands: Any) -> bool:
    # the compiler wraps each print argument in a set of its possible values; undefined is an
    # empty set and prints as <undefined>
    if not isinstance(operands, (list, tuple)):
        raise HaltError("print: illegal argument type")
    parts = []
    for op in operands:
        if not isinstance(op, RegoSet):
            raise HaltError(f"print: illegal argument type: {type_name(op)}")
        if not op.items:
            parts.append("<undefined>")
        else:
            parts.append(" ".join(x if isinstance(x, str) else rego_repr(x) for x in op.items))
    line = " ".join(parts)
    ctx.prints.append(line)
    ctx.host.print_line(line)
    return True
