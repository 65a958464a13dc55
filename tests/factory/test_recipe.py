"""Recipe validation: good recipes load, each malformed one gets its own specific error."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.standin import STANDIN
from factory.cli import app
from factory.recipe import RecipeError, load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["demo.toml", "mifa-1m.toml", "mifa-1m-maugen.toml"])
def test_shipped_recipes_load(name: str) -> None:
    recipe = load_recipe(REPO / "recipes" / name)
    assert recipe.dataset.target > 0
    assert recipe.aus.units == (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)


def test_mifa_1m_is_the_full_build_on_public_weights() -> None:
    recipe = load_recipe(REPO / "recipes" / "mifa-1m.toml")
    assert (recipe.dataset.target, recipe.engine.gpus, recipe.generator.name) == (1_000_000, 8, "fineface")
    assert [d.name for d in recipe.detectors] == ["geometric", "opengraphau", "onnx-au"]
    assert recipe.detectors[2].options()["spec"] == "recipes/detectors/libreface.yaml"
    assert (recipe.face.name, recipe.realism.name, recipe.identities.bank) == ("scrfd", "heuristic-realism", "none")
    assert "{person}" in recipe.generator.options()["prompt_template"]  # demographics in the prompt
    maugen = load_recipe(REPO / "recipes" / "mifa-1m-maugen.toml")
    assert (maugen.dataset.target, maugen.generator.name, maugen.realism.name) == (
        1_000_000,
        "maugen",
        "learned-realism",
    )


def test_cli_flags_override_recipe_fields() -> None:
    recipe = load_recipe(REPO / "recipes" / "demo.toml", target=12, gpus=3, out="/x/y", seed=99)
    assert (recipe.dataset.target, recipe.engine.gpus, recipe.dataset.out, recipe.dataset.seed) == (12, 3, "/x/y", 99)


def test_fingerprint_changes_with_content() -> None:
    base = recipe_from_dict({})
    assert base.fingerprint() == recipe_from_dict({}).fingerprint()
    assert base.fingerprint() != recipe_from_dict({"dataset": {"seed": 1}}).fingerprint()


# (recipe document, field named in the error, words the message must contain)
MALFORMED = [
    ({"dataset": {"shard_size": 0}}, "dataset.shard_size", ["got 0", "greater than or equal to 1"]),
    ({"dataset": {"target": -5}}, "dataset.target", ["got -5"]),
    ({"dataset": {"target": "many"}}, "dataset.target", ["'many'", "integer"]),
    ({"dataset": {"name": "My Data!"}}, "dataset.name", ["'My Data!'", "pattern"]),
    ({"dataset": {"sed": 3}}, "dataset.sed", ["unknown field", "spelling"]),
    ({"aus": {"units": [1, 2, 7]}}, "aus.units", ["AU 7", "allowed"]),
    ({"aus": {"active_share": 1.5}}, "aus.active_share", ["1.5", "less than 1"]),
    ({"aus": {"share_overrides": {"AU99": 0.2}}}, "aus.share_overrides", ["AU99", "allowed"]),
    ({"aus": {"intensity_weights": [1, 1, 1]}}, "aus.intensity_weights", ["[1, 1, 1]"]),
    ({"aus": {"intensity_scale": [0, 3]}}, "aus.intensity_scale", ["unknown field"]),  # retired: one legal value
    ({"emotions": {"mix": {"joy": 1.0}}}, "emotions.mix", ["'joy'", "allowed"]),
    ({"emotions": {"mix": {"happiness": -1.0}}}, "emotions.mix", ["-1.0", ">= 0"]),
    ({"demographics": {"ethnicity": {"martian": 1}}}, "demographics.ethnicity", ["'martian'", "allowed"]),
    ({"demographics": {"gender": {"female": 0, "male": 0}}}, "demographics.gender", ["positive sum"]),
    ({"generator": {"name": "dalle"}}, "generator.name", ["'dalle'", "registered stages"]),
    ({"generator": {"name": "none"}}, "generator", ["required"]),
    ({"output": {"image_format": "gif"}}, "output.image_format", ["'gif'", "'jpg'"]),
    ({"output": {"image_quality": 0}}, "output.image_quality", ["got 0"]),
    ({"engine": {"gpus": -1}}, "engine.gpus", ["got -1"]),
    ({"detectors": [{"name": "geometric"}, {"name": "geometric"}]}, "detectors", ["once"]),
    (
        {"generator": {"name": STANDIN, "seconds_per_batch": -1}},
        "generator.seconds_per_batch",
        ["got -1", "greater than or equal to 0"],
    ),
    ({"generator": {"name": STANDIN, "colour": "red"}}, "generator.colour", ["unknown field"]),
]


@pytest.mark.parametrize(("doc", "field", "words"), MALFORMED, ids=[m[1] + str(i) for i, m in enumerate(MALFORMED)])
def test_malformed_recipe_names_field_value_and_rule(doc: dict, field: str, words: list[str]) -> None:
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(doc, source="bad.toml")
    message = str(info.value)
    assert info.value.field == field or message.count(field) >= 1, message
    assert f"'{field}'" in message or field in message, message
    assert message.startswith("bad.toml"), message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_unreachable_au_share_is_refused_by_the_planner() -> None:
    from factory.plan import Planner

    # 90% prototypes leave too little room to hold AU1 at 5%: sadness, surprise and fear carry it.
    recipe = recipe_from_dict(
        {
            "emotions": {"mix": {"sadness": 0.3, "surprise": 0.3, "fear": 0.3, "mixed": 0.1}},
            "aus": {"share_overrides": {"AU1": 0.05, "AU25": 0.45}},
        }
    )
    with pytest.raises(RecipeError, match="AU1"):
        Planner(recipe)


def test_bad_recipe_file_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[dataset]\nshard_size = 0\nout = "{out}"\n')
    result = CliRunner().invoke(app, ["build", str(bad)])
    assert result.exit_code == 2
    assert "dataset.shard_size" in result.output and "got 0" in result.output
    assert not out.exists()


def test_invalid_toml_syntax_is_reported_with_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text("[dataset\ntarget = 3\n")
    with pytest.raises(RecipeError, match=r"broken\.toml: not valid TOML"):
        load_recipe(bad)
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(bad.read_text())


def test_missing_recipe_file() -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe("/nonexistent/recipe.toml")


BANK_RECIPE = {
    "dataset": {"kind": "identity-bank"},
    "identities": {"bank": "none"},
    "filters": {"name": "portrait-filters"},
    "bank": {"licence": "CreativeML OpenRAIL-M"},
}


def test_identity_bank_recipe_ships_and_loads() -> None:
    recipe = load_recipe(REPO / "recipes" / "identity-bank.toml")
    assert recipe.dataset.kind == "identity-bank" and recipe.identities.bank == "none"
    assert recipe.filters.name == "portrait-filters" and recipe.bank.licence
    assert recipe_from_dict(BANK_RECIPE).dataset.kind == "identity-bank"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"identities": {"bank": "builtin"}}, "identities.bank"),
        ({"emotions": {"mix": {"neutral": 1.0}}}, "emotions"),
        ({"aus": {"active_share": 0.2}}, "aus"),
        ({"filters": {"name": "filters"}}, "filters.name"),
        ({"bank": {"licence": " "}}, "bank.licence"),
    ],
)
def test_identity_bank_recipe_refuses_what_it_fixes(change: dict, field: str) -> None:
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({**BANK_RECIPE, **change}, source="bank.toml")
    assert info.value.field == field and f"'{field}'" in str(info.value) and "identity-bank" in str(info.value)


def test_bank_section_needs_an_identity_bank_build() -> None:
    with pytest.raises(RecipeError, match=r"\[bank\]") as info:
        recipe_from_dict({"bank": {"licence": "x"}})
    assert info.value.field == "bank"


@pytest.mark.parametrize("name", ["demo.toml", "mifa-1m.toml", "mifa-1m-maugen.toml", "identity-bank.toml"])
def test_a_recipe_recorded_in_run_json_loads_again(name: str) -> None:
    """run.json records the whole recipe, defaults spelled out; `factory retry` and the dataset
    card load it back, so every shipped recipe must survive the round trip unchanged."""
    recipe = load_recipe(REPO / "recipes" / name)
    again = recipe_from_dict(json.loads(json.dumps(recipe.model_dump(mode="json"))), source="run.json")
    assert again == recipe and again.fingerprint() == recipe.fingerprint()


def test_a_recipe_recorded_with_the_retired_intensity_scale_still_loads_and_resumes() -> None:
    from factory.engine.rundir import recipe_differences  # deferred: only this test reads the run directory

    current = recipe_from_dict({}).model_dump(mode="json")
    recorded = {**current, "aus": {**current["aus"], "intensity_scale": [0, 5]}}  # its one legal value
    assert recipe_from_dict(recorded) == recipe_from_dict({})
    assert recipe_differences(recorded, current) == []
    assert recipe_differences({**recorded, "aus": {**recorded["aus"], "intensity_scale": [0, 3]}}, current) == [
        "aus.intensity_scale"
    ]
