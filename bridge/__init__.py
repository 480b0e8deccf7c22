"""groqpolicy bridge: run-time pieces that connect OPA to Python (WASM evaluator, gateway, worker, emulator)."""
