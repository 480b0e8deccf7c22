"""Go's standard-library behaviour, where OPA's builtins show it to a policy.

OPA's topdown builtins are Go: `sprintf` is `fmt.Sprintf`, a Rego value prints with `strconv`'s
quoting and shortest float form, `time.format` takes Go reference layouts, `yaml.marshal` is
go-yaml. The ports here reproduce those functions' output byte for byte, for the inputs OPA hands
them. They are plain functions over Python values and import nothing of the engine, so both the
value layer (`values.rego_repr`) and the builtins stand on them without a cycle.

Errors: where the Go function returns an error, the port raises `GoError` (a `ValueError`), whose
text is Go's. A builtin lets it through, and the evaluator treats it as topdown treats a builtin's
error: the call is undefined (or, with strict builtin errors, the evaluation fails with that text).
"""
