"""strings.render_template (topdown template.go) over the text/template port.

OPA hands the variables to Go's text/template as JSON values with json.Number numbers and
replaces "<no value>" in the output with "<undefined>". A template Go rejects makes the call
undefined; a construct outside the port's subset fails the evaluation (HaltError), so an
unimplemented feature can never quietly turn into "undefined".
"""

from __future__ import annotations

from typing import Any

from bridge.opawasm.builtins.operands import need_obj, need_str
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.errors import HaltError
from bridge.opawasm.gocompat import texttemplate
from bridge.opawasm.gocompat.errors import Unsupported
from bridge.opawasm.values import RegoSet, to_json


@builtin("strings.render_template")
def render_template(ctx: EvalContext, template: Any, variables: Any) -> str:
    tpl = need_str(template, 1)
    variables = need_obj(variables, 2)
    if any(isinstance(x, RegoSet) for x in variables.values()):
        variables = to_json(variables)
    def progress(size: int) -> None:
        ctx.check_deadline()
        ctx.check_size(size, "strings.render_template")

    try:
        out = texttemplate.render(tpl, variables, progress)
    except Unsupported as exc:
        raise HaltError(f"strings.render_template: {exc}") from None
    return out.replace("<no value>", "<undefined>")
