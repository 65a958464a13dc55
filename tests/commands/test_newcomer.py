"""What a newcomer saw on the demo dataset (issue 21, point 7): the card's identities, bank
licences, zero-sample emotions and plain values; `filter --limit` saying fewer matched;
`status --verify` saying it verified; `models list` naming every model a shipped recipe uses."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from factory.commands.report.data import collect
from factory.recipe import load_recipe
from manifests.card import drop_code, render_card
from stages.catalogue import local_path
from tests.cli_runner import run_cli

REPO = Path(__file__).resolve().parents[2]


def test_the_card_counts_identities_names_bank_licences_and_every_recipe_emotion(demo_build: tuple[Path, Path]) -> None:
    run, recipe = demo_build
    card = render_card(run)
    assert re.search(r"^\d+ identities in \d+ samples\.$", card, re.M), card
    assert "| public-domain |" in card  # the builtin bank's photos
    emotions = load_recipe(recipe).emotions.mix
    section = card.split("### emotion", 1)[1].split("###", 1)[0]
    assert all(f"| {emotion} |" in section for emotion in emotions)
    counts = card.split("## Counts", 1)[1].split("###", 1)[0]
    assert "surplus shards: " in counts and "[" not in counts  # values, not Python lists
    # The demo's warp labels are exact: the card scores the consensus against them.
    assert re.search(r"^\d+ samples carry exact labels .* mean F1 [\d.]+ .* mean MAE [\d.]+ ", card, re.M), card


def test_filter_says_when_fewer_than_limit_matched(demo_build: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = demo_build
    code, output = run_cli("filter", run, tmp_path / "s", "--limit", "100000", columns=300)
    assert code == 0 and "fewer than --limit 100000" in output
    code, output = run_cli("filter", run, tmp_path / "t", "--limit", "1", columns=300)
    assert code == 0 and "fewer than" not in output


def test_status_verify_says_it_verified(demo_build: tuple[Path, Path], tmp_path: Path) -> None:
    run = shutil.copytree(demo_build[0], tmp_path / "run")  # status takes the build lock's probe
    code, output = run_cli("status", run, "--verify", columns=300)
    assert code == 0 and "verified: every indexed shard file" in output


def test_models_list_names_every_model_a_shipped_recipe_uses() -> None:
    code, output = run_cli("models", "list", columns=300)
    assert code == 0
    for name in ("stable-diffusion-v1-5", "dlib-68-landmarks", "dlib-resnet-face", "stable-diffusion-2-1-base"):
        assert name in output
    pipeline = load_recipe(REPO / "recipes" / "identity-bank.toml").stage_config("generator").pipeline
    assert local_path("stable-diffusion-v1-5", Path("models")) == Path(pipeline)  # the pull the error advises


def test_the_reports_all_detectors_agree_row_is_computed(demo_build: tuple[Path, Path]) -> None:
    data = collect(demo_build[0])
    covered = ~np.isnan(data.unanimous)
    assert covered.sum() >= 2  # the demo's two detectors share several AUs
    assert np.all((data.unanimous[covered] >= 0.0) & (data.unanimous[covered] <= 1.0))


def test_one_drop_rule_is_one_reason_code_whatever_its_values() -> None:
    reasons = [f"prompt read-back jaccard {j:.2f} < 0.50" for j in (0.0, 0.25, 0.33, 0.4)]
    assert {drop_code(r) for r in reasons} == {"prompt read-back jaccard # < #"}
    assert drop_code("identity 'builtin-a' unusable: no face") == drop_code("identity 'b' unusable: no face")
    assert drop_code("no face found") != drop_code("realism 0.1 below min_realism=0.3")
