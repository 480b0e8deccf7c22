"""What a compile stage found: structured messages located in the user's source (file, row, col),
the error that carries them, `opa test` results, and the reading of OPA's `--format json` errors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import msgspec

from bridge.kernel.errors import GroqPolicyError


class CompileMessage(msgspec.Struct, omit_defaults=True):
    """One compiler finding, located in the user's source."""

    stage: str  # check | test | build
    message: str
    code: str = ""
    file: str = ""
    row: int = 0
    col: int = 0

    def __str__(self) -> str:
        where = f"{self.file}:{self.row}:{self.col}: " if self.file else ""
        code = f"{self.code}: " if self.code else ""
        return f"{where}{code}{self.message}"


class CompileError(GroqPolicyError):
    """Rego that did not pass a stage; `messages` carries the structured findings."""

    status = 422

    def __init__(self, stage: str, messages: Sequence[CompileMessage]) -> None:
        self.stage = stage
        self.messages = list(messages)
        summary = "; ".join(str(m) for m in self.messages[:5]) or "no details"
        more = f" (+{len(self.messages) - 5} more)" if len(self.messages) > 5 else ""
        super().__init__(f"opa {stage} failed: {summary}{more}",
                         details={"stage": stage, "messages": [msgspec.structs.asdict(m) for m in self.messages]})

class TestResult(msgspec.Struct, omit_defaults=True):
    package: str
    name: str
    passed: bool
    file: str = ""
    row: int = 0
    error: str = ""

def parse_errors(stage: str, output: str, base: Path) -> list[CompileMessage]:
    """OPA's `--format json` error document -> messages; any other text becomes one message."""
    try:
        doc = json.loads(output)
    except ValueError:
        text = output.strip() or f"opa {stage} failed without output"
        return [CompileMessage(stage=stage, message=text)]
    errors = doc.get("errors", []) if isinstance(doc, dict) else []
    messages = []
    for err in errors:
        loc = err.get("location") or {}
        file = str(loc.get("file", ""))
        if file:
            path = Path(file)
            if path.is_absolute() and path.is_relative_to(base):
                file = str(path.relative_to(base))
        messages.append(
            CompileMessage(
                stage=stage,
                message=str(err.get("message", "")),
                code=str(err.get("code", "")),
                file=file,
                row=int(loc.get("row", 0) or 0),
                col=int(loc.get("col", 0) or 0),
            )
        )
    return messages or [CompileMessage(stage=stage, message=output.strip()[:2000])]
