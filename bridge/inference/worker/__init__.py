"""Inference worker: `nats.micro` service answering `groq.infer.<tier>` through Groq (or its emulator).
(`policy.evaluate` is served by the control plane: controlplane.evaluation.nats_service.)"""

from bridge.inference.worker.engine import EngineSettings, InferenceEngine
from bridge.inference.worker.service import GroqConnection, Worker, connect_groq, start_worker, stop_worker

__all__ = [
    "EngineSettings",
    "GroqConnection",
    "InferenceEngine",
    "Worker",
    "connect_groq",
    "start_worker",
    "stop_worker",
]
