"""Host builtins: the Rego builtins OPA's wasm compiler leaves to the host (`opa_builtin0..4`).

Each builtin is a plain function `f(ctx, *args) -> value` registered under its Rego name
(`registry.builtin`). Semantics follow OPA's topdown implementations (v1/topdown/*.go): a
non-halting error (`BuiltinError`, or any ordinary exception from bad operands) makes the call
undefined, exactly as topdown does outside strict mode; a `HaltError` fails the whole evaluation.
Importing this package registers every family below; `provided()` is the resulting set of names.
"""

from __future__ import annotations

from bridge.opawasm.builtins import (  # noqa: F401 - imported for their @builtin registrations
    crypto,
    encoding,
    globs,
    graphql,
    http,
    jsonpatch,
    jwt,
    jwt_sign,
    misc,
    net,
    providers,
    semver,
    strings,
    template,
    timefns,
    units,
    uri,
    uuids,
    x509,
)
from bridge.opawasm.builtins.registry import REGISTRY, EvalContext, builtin
from bridge.opawasm.errors import BuiltinError, HaltError
from bridge.opawasm.values import UNDEFINED

_PROVIDED = frozenset(REGISTRY)


def provided() -> frozenset[str]:
    """The names of every builtin the host implements."""
    return _PROVIDED


__all__ = ["REGISTRY", "UNDEFINED", "BuiltinError", "EvalContext", "HaltError", "builtin", "provided"]
