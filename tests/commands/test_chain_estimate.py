"""`factory plan --estimate` of the multi-identity chain: the bank build, then the build over it."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from factory.cli import app
from factory.commands.chain_estimate import estimate_chain
from factory.commands.estimate import EstimateError
from factory.recipe import load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[2]
CHAIN = REPO / "recipes" / "mifa-1m-multi-identity.toml"
BANK_RECIPE = REPO / "recipes" / "identity-bank.toml"


def _number(text: str, label: str) -> float:
    match = re.search(rf"{label}: ([\d,.]+)", text)
    assert match, f"no {label!r} in {text}"
    return float(match[1].replace(",", ""))


def test_plan_estimate_prices_both_steps_of_the_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # bank_recipe is relative to the repository root; my-bank is not there
    args = ["plan", str(CHAIN), "--target", "2000", "--estimate", "--gpus", "8"]
    result = CliRunner().invoke(app, [*args, "--batch-seconds", "3", "--bank-batch-seconds", "1.5"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    step1, step2 = text.split("step 1, the identity bank", 1)[1].split("step 2, the build over the bank:")
    bank = load_recipe(BANK_RECIPE)
    bank_samples = math.ceil(bank.dataset.target / bank.engine.expected_acceptance_rate)
    bank_hours = math.ceil(bank_samples / bank.engine.batch_size) * 1.5 / 3600
    assert f"{bank.dataset.target:,} identities to build (100 needed by step 2)" in step1
    assert _number(step1, "GPU-hours") == pytest.approx(bank_hours, abs=0.05)
    build_hours = math.ceil(4000 / 16) * 3 / 3600
    assert _number(step2, "GPU-hours") == pytest.approx(build_hours, abs=0.05)
    chain_hours = float(re.search(r"chain: ([\d,.]+) GPU-hours", text)[1].replace(",", ""))  # type: ignore[index]
    assert chain_hours == pytest.approx(bank_hours + build_hours, abs=0.1)


def test_bank_step_without_a_time_is_a_user_error_naming_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(
        app, ["plan", str(CHAIN), "--target", "200", "--estimate", "--batch-seconds", "3", "--gpus", "8"]
    )
    assert result.exit_code == 2, result.output
    assert "--bank-batch-seconds" in result.output and "identity-bank.toml" in result.output


def _chain_recipe(bank: str, bank_recipe: str) -> object:
    return recipe_from_dict(
        {
            "dataset": {"target": 40},
            "identities": {"bank": bank, "expressions_per_identity": 20, "bank_recipe": bank_recipe},
            "engine": {"gpus": 2, "batch_size": 4},
        }
    )


def test_a_bank_already_there_costs_nothing_more(tmp_path: Path) -> None:
    bank = tmp_path / "bank"
    bank.mkdir()
    rows = [f"p{i},p{i}.png,white,adult,female,test,public-domain" for i in range(2)]
    (bank / "identities.csv").write_text(
        "identity_id,image,ethnicity,age_band,gender,source,licence\n" + "\n".join(rows)
    )
    chain = estimate_chain(_chain_recipe(str(bank), str(BANK_RECIPE)), batch_seconds=2.0, acceptance=0.5)  # type: ignore[arg-type]
    assert chain.bank is None and "with 2 identities (>= 2 needed): nothing to build" in chain.bank_note
    assert chain.gpu_hours == chain.build.gpu_hours == pytest.approx(20 * 2.0 / 3600)
    with pytest.raises(EstimateError, match="no such file"):
        estimate_chain(_chain_recipe(str(bank), str(tmp_path / "nope.toml")), batch_seconds=2.0)  # type: ignore[arg-type]
