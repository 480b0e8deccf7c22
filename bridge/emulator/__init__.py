"""Groq emulator: a Groq-compatible HTTP API with deterministic answers and injectable faults."""

from bridge.emulator.app import EmulatorConfig, GroqEmulator, ModelBehaviour, create_app, verdict_for

__all__ = ["EmulatorConfig", "GroqEmulator", "ModelBehaviour", "create_app", "verdict_for"]
