"""Inference worker: `nats.micro` service answering `groq.infer.<tier>` through Groq (or its emulator).
(`policy.evaluate` is served by the control plane: controlplane.evaluation.nats_service.)"""

from bridge.inference.worker.engine import InferenceEngine
from bridge.inference.worker.service import (
    GroqConnection,
    GroqEndpoint,
    Worker,
    connect_groq,
    groq_endpoint,
    start_worker,
    stop_worker,
)
from bridge.kernel.config import EngineSettings

__all__ = [
    "EngineSettings",
    "GroqConnection",
    "GroqEndpoint",
    "InferenceEngine",
    "Worker",
    "connect_groq",
    "groq_endpoint",
    "start_worker",
    "stop_worker",
]
