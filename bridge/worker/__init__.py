"""Inference worker: `nats.micro` service answering `groq.infer.<tier>` through Groq (or its emulator).
(`policy.evaluate` is served by the control plane: controlplane.evaluation.nats_service.)"""

from bridge.worker.engine import EngineSettings, InferenceEngine
from bridge.worker.service import GroqConnection, Worker, connect_groq, start_worker, stop_worker

__all__ = [
    "EngineSettings", "InferenceEngine", "GroqConnection", "Worker", "connect_groq", "start_worker", "stop_worker",
]
