"""What OPA agents send back: decision logs (`POST /logs`) and status (`POST /status`), and the
configuration an agent starts from (`GET /api/v1/opa/config`)."""
