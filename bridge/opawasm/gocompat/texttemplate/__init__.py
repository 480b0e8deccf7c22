"""Go's text/template, the part policies use, as OPA's `strings.render_template` runs it.

Field chains, variables, `if`/`else if`/`else`, `range` (with else and `$k, $v :=`), `with`,
pipelines, comments, trim markers, and the functions and, or, not, len, index, print, printf,
println, eq, ne, lt, le, gt, ge. What Go rejects raises `GoError` with Go's message; a construct
outside this subset (`define`, `template`, `block`, ...) raises `Unsupported`, so an unimplemented
feature can never pass for a template error.
"""

from __future__ import annotations

from typing import Any

from bridge.opawasm.gocompat.texttemplate.execute import Progress, execute
from bridge.opawasm.gocompat.texttemplate.parse import parse
from bridge.opawasm.gocompat.texttemplate.values import from_json


def render(template: str, variables: Any, progress: Progress | None = None) -> str:
    """Execute `template` over JSON `variables` as OPA passes them (numbers as json.Number)."""
    data = from_json(variables)
    return execute(parse(template), data, progress)
