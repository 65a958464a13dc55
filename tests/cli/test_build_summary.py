"""The line `factory build` ends with: how many samples the dataset holds, of how many accepted
and generated. A build whose policy selects among the accepted samples (the closed-loop balance,
an identity bank's dedup) says how many it kept of how many accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory.cli import edge
from factory.engine.build import BuildSummary
from factory.recipe import Recipe
from tests.cli.conftest import REPO

DEMO = REPO / "recipes" / "demo.toml"


@pytest.mark.parametrize(
    ("selected_from", "said"),
    [
        (None, "300 accepted of 1750 generated (target 300)"),
        (357, "300 kept of 357 accepted, 1750 generated (target 300)"),
    ],
)
def test_the_build_line_says_kept_of_accepted_when_a_policy_selected(
    selected_from: int | None,
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fake_build(r: Recipe, **options: object) -> BuildSummary:
        return BuildSummary(
            run_dir=Path(r.dataset.out),
            target=300,
            accepted=300,
            indexed_shards=list(range(35)),
            surplus_shards=[],
            failed_shards={},
            planned_samples=1750,
            seconds=1.0,
            run_seconds=1.0,
            selected_from=selected_from,
        )

    monkeypatch.setattr("factory.engine.build.build", fake_build)
    monkeypatch.chdir(tmp_path)
    assert edge.run(["build", str(DEMO), "--quiet"]) == 0
    assert said in " ".join(capsys.readouterr().out.split())
