"""What OPA agents send back: decision logs (`POST /logs`) and status (`POST /status`)."""
