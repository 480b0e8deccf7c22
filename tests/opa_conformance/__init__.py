"""OPA's conformance suite (`v1/test/cases/testdata/v1` of the pinned opa) run through the
in-process evaluator, judged the way OPA's own wasm runner judges it
(`internal/wasm/sdk/test/e2e/external_test.go`). `tests/test_wasm_conformance.py` drives it; the
mapping from a case's query to an entrypoint is documented in `bridge/opawasm/README.md`."""
