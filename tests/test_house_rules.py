"""The house rules that a linter does not check: module and function sizes, deferred imports
that say why, stage configs typed through the generic base.

The import direction itself is checked by import-linter (`make lint`, contracts in
pyproject.toml); ruff checks style and formatting.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("factory", "stages", "manifests", "cluster")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# Modules that are mostly data tables (vocabulary, regex tables); their code stays small.
DATA_TABLES = {
    "stages/prompt/grammar.py": "sentence templates and word tables of the grammar",
    "stages/prompt/readback.py": "regex tables that read a description back into AUs",
}


def _modules() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def test_no_module_over_400_lines_except_data_tables() -> None:
    too_long = {
        _rel(p): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES and _rel(p) not in DATA_TABLES
    }
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them by concern): {too_long}"


def test_no_function_over_80_lines() -> None:
    too_long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{_rel(path)}:{node.lineno} {node.name} ({length} lines)")
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: {too_long}"


def _deferred_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import inside a function body."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    out += [(inner.lineno, alias.name) for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom) and inner.level == 0 and inner.module:
                    out.append((inner.lineno, inner.module))
    return out


def test_imports_inside_functions_say_why_they_are_deferred() -> None:
    """Imports belong at the top of a module; one that defers a heavy or optional dependency
    (torch, dlib, onnxruntime, ray, ...) carries a ``# deferred: <reason>`` comment."""
    problems = []
    for path in _modules():
        lines = path.read_text().splitlines()
        for lineno, module in _deferred_imports(path):
            nearby = " ".join(lines[max(0, lineno - 3) : lineno])
            if "deferred" not in nearby:
                problems.append(
                    f"{_rel(path)}:{lineno} imports {module} inside a function without a "
                    "'# deferred: <reason>' comment: move it to the top or say why"
                )
    assert not problems, "\n".join(problems)


def test_stage_configs_are_typed_through_the_generic_base() -> None:
    pattern = r"=\s*self\.config\s*#\s*type:\s*ignore"
    hits = [
        f"{_rel(p)}:{i}"
        for p in (REPO / "stages").rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), start=1)
        if re.search(pattern, line)
    ]
    assert not hits, f"use `class MyStage(Stage[MyConfig])` and `self.config` instead: {hits}"
