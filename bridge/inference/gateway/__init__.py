"""Bridge gateway: HTTP :8016 (`POST /v1/infer/{tier}`) -> NATS `groq.infer.<tier>`."""

from bridge.inference.client import InferClient
from bridge.inference.gateway.app import Gateway, create_app
from bridge.inference.gateway.server import serve_gateway

__all__ = ["Gateway", "InferClient", "create_app", "serve_gateway"]
