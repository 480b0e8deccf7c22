"""Inference worker: `nats.micro` service answering `groq.infer.<tier>` through Groq (or its emulator),
and the `policy.evaluate` service for internal tools."""

from bridge.worker.engine import EngineSettings, InferenceEngine
from bridge.worker.evaluate import PolicyService, start_policy_service
from bridge.worker.service import GroqConnection, Worker, connect_groq, start_worker, stop_worker

__all__ = [
    "EngineSettings", "InferenceEngine", "GroqConnection", "Worker", "connect_groq", "start_worker", "stop_worker",
    "PolicyService", "start_policy_service",
]
