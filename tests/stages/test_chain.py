"""The declared data flow of a stage chain, checked from stage classes before anything runs.

``Pipeline.check`` walks specs from the plan's fields; a recipe whose chain does not hold is
refused when it is loaded, so ``factory plan``, ``doctor`` and ``build`` exit 2 with one line
naming the stage and the field, and no Ray worker starts.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from factory.cli import app
from factory.recipe import RecipeError, recipe_from_dict
from stages import REGISTRY, stage_class
from stages.pipeline import ChainError, Pipeline, StageSpec

REPO = Path(__file__).resolve().parents[2]
PLUGINS = "tests.stages.chain_plugins"
# The filters read the agreement stage's consensus; with no agreement stage nothing writes it.
NO_AGREEMENT = {"agreement": {"name": "none"}}
MISSPELT = {"realism": {"name": f"{PLUGINS}:MisspeltRealism"}}


def _demo(**sections: Any) -> dict[str, Any]:
    doc = tomllib.loads((REPO / "recipes" / "demo.toml").read_text())
    doc.update(sections)
    return doc


@pytest.mark.parametrize("name", ["demo.toml", "mifa-1m.toml", "mifa-1m-maugen.toml", "identity-bank.toml"])
def test_shipped_recipes_chain(name: str) -> None:
    doc = tomllib.loads((REPO / "recipes" / name).read_text())
    Pipeline.check(recipe_from_dict(doc).stage_specs())


def test_every_registered_stage_declares_its_writes() -> None:
    for name in REGISTRY:
        cls = stage_class(name)
        assert cls.writes, f"{name} declares no fields it writes"


def test_a_read_no_earlier_stage_writes_names_stage_field_and_writers() -> None:
    specs = [StageSpec("prompt", "prompt"), StageSpec("generator", "warp"), StageSpec("filters", "filters")]
    with pytest.raises(ChainError) as caught:
        Pipeline.check(specs)
    message = str(caught.value)
    assert "stage filters (filters)" in message and "'consensus_occurrence'" in message
    assert "agreement" in message  # the stage that could write it
    assert (caught.value.path, caught.value.field) == ("filters", "consensus_occurrence")
    assert "\n" not in message


def test_order_matters_a_reader_before_its_writer_is_refused() -> None:
    specs = [StageSpec("prompt", "prompt"), StageSpec("face", "dlib"), StageSpec("generator", "warp")]
    with pytest.raises(ChainError, match=r"stage face \(dlib\) reads field 'image'"):
        Pipeline.check(specs)
    Pipeline.check([StageSpec("prompt", "prompt"), StageSpec("generator", "warp"), StageSpec("face", "dlib")])


def test_plugin_with_a_misspelt_field_is_refused_with_a_suggestion() -> None:
    with pytest.raises(RecipeError) as caught:
        recipe_from_dict(_demo(**MISSPELT), source="r.toml")
    message = str(caught.value)
    assert message.startswith("r.toml: stage realism (tests.stages.chain_plugins:MisspeltRealism)")
    assert "'realism_scor'" in message and "did you mean 'realism_score'" in message
    assert caught.value.field == "realism"


def test_plugin_declaring_nothing_or_a_writer_column_is_refused() -> None:
    with pytest.raises(
        RecipeError, match=r"stage filters \(.*:Undeclared\) does not declare the record fields it writes"
    ):
        recipe_from_dict(_demo(filters={"name": f"{PLUGINS}:Undeclared"}))
    with pytest.raises(RecipeError, match=r"writes 'accepted', which only the shard writer sets"):
        recipe_from_dict(_demo(filters={"name": f"{PLUGINS}:SetsAccepted"}))


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    """``doc`` as a TOML file (tables of scalars, and arrays of such tables)."""
    lines = []
    for section, tables in doc.items():
        for table in tables if isinstance(tables, list) else [tables]:
            lines.append(f"[[{section}]]" if isinstance(tables, list) else f"[{section}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path = tmp_path / "broken.toml"
    path.write_text("\n".join(lines) + "\n")
    assert tomllib.loads(path.read_text()) == doc
    return path


@pytest.mark.parametrize(
    ("sections", "stage", "field"),
    [
        (NO_AGREEMENT, "stage filters (filters)", "'consensus_occurrence'"),
        (MISSPELT, "stage realism", "'realism_scor'"),
    ],
    ids=["filters-without-agreement", "misspelt-plugin"],
)
@pytest.mark.parametrize("command", ["plan", "doctor", "build"])
def test_cli_refuses_a_broken_chain_with_exit_2_before_ray(
    tmp_path: Path, command: str, sections: dict[str, Any], stage: str, field: str
) -> None:
    out = tmp_path / "out"
    recipe = _write(tmp_path, _demo(**sections, dataset={"name": "broken", "target": 10, "out": str(out)}))
    result = CliRunner().invoke(app, [command, str(recipe)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:"), result.output
    assert stage in errors[0] and field in errors[0]
    assert not out.exists()
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


def test_portrait_filters_need_a_face_stage_with_68_landmarks() -> None:
    chain = [StageSpec("prompt", "prompt"), StageSpec("generator", "warp")]
    with pytest.raises(ChainError, match=r"stage filters \(portrait-filters\) reads field 'landmarks'.*dlib"):
        Pipeline.check([*chain, StageSpec("face", "scrfd"), StageSpec("filters", "portrait-filters")])
    Pipeline.check([*chain, StageSpec("face", "dlib"), StageSpec("filters", "portrait-filters")])
