"""Bridge gateway: HTTP :8016 (`POST /v1/infer/{tier}`) -> NATS `groq.infer.<tier>`."""

from bridge.gateway.app import Gateway, create_app

__all__ = ["Gateway", "create_app"]
