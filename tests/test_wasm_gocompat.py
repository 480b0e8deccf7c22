"""The Go ports under bridge.opawasm.gocompat, against outputs of the Go functions they port.

The differential corpus checks them through `opa eval`; these pin the ports themselves, and that
the package stays a leaf that imports nothing else of the engine."""

from __future__ import annotations

import grimp
import pytest

from bridge.opawasm.gocompat import goyaml, texttemplate
from bridge.opawasm.gocompat.errors import GoError, Unsupported
from bridge.opawasm.gocompat.fmt import sprintf
from bridge.opawasm.gocompat.gotime import RFC3339_NANO, GoTime, format_time, parse_duration, parse_time
from bridge.opawasm.gocompat.strconv import format_float_g, quote, quote_rune


def test_gocompat_imports_nothing_else_of_the_project():
    graph = grimp.build_graph("bridge")
    for module in graph.find_descendants("bridge.opawasm.gocompat"):
        outside = {m for m in graph.find_modules_directly_imported_by(module)
                   if not m.startswith("bridge.opawasm.gocompat")}
        assert not outside, f"{module} imports {sorted(outside)}"


def test_strconv():
    assert quote('a"\\\n\t\x01\x7fé\u2028') == '"a\\"\\\\\\n\\t\\x01\\x7fé\\u2028"'
    assert quote_rune("'") == "'\\''" and quote_rune("x") == "'x'" and quote_rune("\x00") == "'\\x00'"
    assert [format_float_g(f) for f in (0.1, 1e6, 1e-05, 123456.0, -0.0)] == ["0.1", "1e+06", "1e-05", "123456", "-0"]
    assert format_float_g(1e20, exp_limit=21) == "100000000000000000000"
    assert format_float_g(1e21, exp_limit=21) == "1e+21"
    assert format_float_g(float("inf")) == "+Inf" and format_float_g(float("nan")) == "NaN"


@pytest.mark.parametrize(("fmt", "args", "want"), [
    ("%s:%s", ["alice", "read"], "alice:read"),
    ("%5.2f|%-4d|%04d", [3.14159, 7, -12], " 3.14|7   |-012"),
    ("%x %X %o %b %#x", [255, 255, 8, 5, 255], "ff FF 10 101 0xff"),
    ("%q %v %T", ["hi", 1.5, 2], '"hi" 1.5 int64'),
    ("%e %g %G", [1234.5678, 1e21, 1e-7], "1.234568e+03 1e+21 1E-07"),
    ("%*d|%.*f", [5, 3, 2, 3.14159], "    3|3.14"),
    ("%d %d", [1], "1 %!d(MISSING)"),
    ("%d", [1, "x"], "1%!(EXTRA string=x)"),
    ("%d", ["x"], "%!d(string=x)"),
    ("100%%", [], "100%"),
    ("%c%q", [65, 66], "A'B'"),
    ("%v", [2**70], "1180591620717411303424"),
    ("%T", [2**70], "*big.Int"),
])
def test_sprintf(fmt, args, want):
    assert sprintf(fmt, args) == want


@pytest.mark.parametrize("fmt", ["%s", "%v", "%d", "a %s b %v c %d%%", "%s%s%s%s%s%s%s", "no verbs", "100%%"])
def test_sprintf_template_prints_as_the_port(fmt):
    """The %-template a plain format keeps prints what the port prints, for every operand type."""
    from bridge.opawasm.gocompat.fmt import _compile, _run, sprintf_plain

    operands = ["x", "", "%d", 0, -7, 2**63, -(2**70), 1.5, 2.0, True]
    n = fmt.replace("%%", "").count("%")
    for i in range(len(operands)):
        args = [operands[(i + k) % len(operands)] for k in range(n)]
        want = _run(_compile(fmt), args, len(fmt), None)
        assert sprintf(fmt, args) == want
        assert sprintf_plain(fmt, args) in (None, want)
    assert sprintf_plain("%s %d", ["a", 1]) == "a 1" and sprintf_plain("%s", [1.5]) is None
    assert sprintf_plain("%5s", ["a"]) is None and sprintf_plain("%s", ["a", "b"]) is None


def test_time_layouts_and_durations():
    t = GoTime.from_unix_ns(1_700_000_000_123_456_789)
    assert format_time(t, RFC3339_NANO) == "2023-11-14T22:13:20.123456789Z"
    assert format_time(t, "Mon Jan _2 3:04PM 2006 .000") == "Tue Nov 14 10:13PM 2023 .123"
    assert parse_time(RFC3339_NANO, "2023-11-14T22:13:20.123456789Z").unix_ns() == 1_700_000_000_123_456_789
    assert parse_duration("1h30m") == 5_400_000_000_000 and parse_duration("-1.5s") == -1_500_000_000
    with pytest.raises(GoError, match='time: unknown unit "x" in duration "1x"'):
        parse_duration("1x")
    with pytest.raises(GoError, match='parsing time "yesterday"'):
        parse_time(RFC3339_NANO, "yesterday")


def test_yaml_reads_the_1_2_core_schema_and_writes_like_sigs_k8s_io():
    assert goyaml.unmarshal("a: yes\nb: 0x10\nc: 1:30\nd: ~\n") == {"a": "yes", "b": 16, "c": "1:30", "d": None}
    assert goyaml.marshal({"b": [1, "on"], "a": {"x": "multi\nline"}}) == 'a:\n  x: |-\n    multi\n    line\nb:\n  - 1\n  - "on"\n'
    with pytest.raises(GoError, match="yaml: "):
        goyaml.unmarshal("a: [")
    assert not goyaml.is_valid("a: [")


def test_text_template():
    assert texttemplate.render("{{range $i, $v := .xs}}{{$i}}={{$v}} {{end}}{{.n}}", {"xs": ["a", "b"], "n": 1.5}) \
        == "0=a 1=b 1.5"
    assert texttemplate.render("{{.missing}}", {}) == "<no value>"
    with pytest.raises(GoError, match='template: function "nope" not defined'):
        texttemplate.render("{{nope 1}}", {})
    with pytest.raises(Unsupported, match=r"\{\{define\}\}"):
        texttemplate.render('{{define "x"}}{{end}}', {})
