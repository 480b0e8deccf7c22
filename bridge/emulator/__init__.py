"""Groq emulator: a Groq-compatible HTTP API with deterministic answers and injectable faults.

Tests and benchmarks serve it themselves; product code reaches it in one place only, the
supervisor (`groqpolicy up`), which starts it as its own process (`command`) when no
`GROQ_API_KEY` is configured and points the worker at it with `GROQPOLICY_EMULATOR_URL`.
"""

import sys

from bridge.emulator.app import GroqEmulator, create_app
from bridge.emulator.behaviour import EmulatorConfig, ModelBehaviour, verdict_for


def command(port: int, host: str = "127.0.0.1") -> list[str]:
    """The command line that serves the emulator on `host:port` as a process of its own."""
    return [sys.executable, "-m", "bridge.emulator", "--host", host, "--port", str(port)]


__all__ = ["EmulatorConfig", "GroqEmulator", "ModelBehaviour", "command", "create_app", "verdict_for"]
