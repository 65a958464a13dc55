"""`factory doctor` and `factory status` through the CLI."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from factory.cli import app
from factory.commands.doctor import run_checks
from factory.recipe import recipe_from_dict

REPO = Path(__file__).resolve().parents[2]


def test_doctor_reports_a_missing_checkpoint_with_the_stage_message(tmp_path: Path) -> None:
    recipe = recipe_from_dict({"realism": {"name": "learned-realism", "checkpoint": str(tmp_path / "nope.pt")}})
    checks = {c.name: c for c in run_checks(recipe)}
    realism = checks["stage realism = learned-realism"]
    assert not realism.ok and "nope.pt" in realism.detail
    assert checks["package ray"].ok
    assert checks["stage prompt = prompt"].ok


def test_doctor_reports_an_unreachable_llm_endpoint() -> None:
    recipe = recipe_from_dict({"prompt": {"name": "prompt", "backend": "llm", "base_url": "http://127.0.0.1:9/v1"}})
    llm = {c.name: c for c in run_checks(recipe)}["LLM endpoint"]
    assert not llm.ok and "127.0.0.1:9" in llm.detail


def test_status_of_a_directory_that_is_not_a_build(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert result.exit_code == 2 and "not a build directory" in result.output
