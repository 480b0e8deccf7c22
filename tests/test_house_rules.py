"""The floor plan's size rules, held by a test so they cannot decay silently: no product module over
400 lines, the pipeline a short orchestrator (≤ 300 lines), no function over 60 lines unless the
line above it argues why (a comment starting `# long:`)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRODUCT = [REPO / "bridge", REPO / "controlplane"]
MAX_MODULE_LINES = 400
MAX_PIPELINE_LINES = 300
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(p for root in PRODUCT for p in root.rglob("*.py"))


def test_no_product_module_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_the_pipeline_is_a_short_orchestrator():
    assert len((REPO / "controlplane/evaluation/pipeline.py").read_text().splitlines()) <= MAX_PIPELINE_LINES


def test_no_function_is_over_60_lines_unless_a_comment_argues_it():
    long = []
    for path in _modules():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                argued = first >= 2 and lines[first - 2].strip().startswith("# long:")
                if size > MAX_FUNCTION_LINES and not argued:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({size} lines)")
    assert long == []
