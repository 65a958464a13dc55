"""Every registered stage states its licence (the dataset card lists them; a non-commercial
one marks the whole dataset), and the configuration-dependent ones read it before setup()."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages import REGISTRY, stage_class
from stages.base import UNDECLARED_LICENCE, Stage, StageContext
from stages.catalogue import DLIB_68_LICENCE
from stages.filters import FilterConfig, FilterStage
from stages.generators.diffusers import DiffusersConfig, DiffusersGenerator
from stages.prompt.stage import PromptConfig, PromptStage


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_stage_declares_a_licence(name: str) -> None:
    cls = stage_class(name)
    assert cls.licence and cls.licence != UNDECLARED_LICENCE, f"stage {name!r} does not declare `licence`"


def test_a_stage_without_a_licence_says_so() -> None:
    class Mine(Stage):  # type: ignore[type-arg]
        name = "mine"

    assert Mine.licence == UNDECLARED_LICENCE
    assert Mine.licence.startswith("UNDECLARED")


@pytest.mark.parametrize("name", ["warp", "dlib", "lbp", "geometric", "appearance"])
def test_stages_using_dlibs_68_point_model_are_non_commercial(name: str) -> None:
    # shape_predictor_68_face_landmarks.dat is trained on iBUG 300-W (research only).
    assert DLIB_68_LICENCE in stage_class(name).licence
    assert "non-commercial" in stage_class(name).licence


def test_scrfd_and_libreface_are_non_commercial() -> None:
    assert "non-commercial" in stage_class("scrfd").licence
    assert "non-commercial" in stage_class("onnx-au").licence
    assert stage_class("opengraphau").licence.endswith(
        "MIT (code and released weights, lingjivoo/OpenGraphAU); trained on BP4D/DISFA/RAF-AU/..."
    )


def test_diffusers_licence_comes_from_the_pipeline_model_card(tmp_path: Path) -> None:
    context = StageContext(run_dir=tmp_path)
    folder = tmp_path / "pipe"
    folder.mkdir()
    stage = DiffusersGenerator(DiffusersConfig(pipeline=str(folder)), context)
    assert "UNDECLARED" in stage.licence_notice()  # no card: visible, not silent
    (folder / "README.md").write_text("---\nlicense: creativeml-openrail-m\ntags:\n- x\n---\n# card\n")
    assert "creativeml-openrail-m" in stage.licence_notice()


def test_prompt_and_filter_licences_follow_their_config(tmp_path: Path) -> None:
    context = StageContext(run_dir=tmp_path)
    assert PromptStage(PromptConfig(), context).licence_notice() == PromptStage.licence
    llm = PromptStage(PromptConfig(backend="llm", model="org/some-llm"), context).licence_notice()
    assert "org/some-llm" in llm
    assert "no model" in FilterStage(FilterConfig(), context).licence_notice()
    assert DLIB_68_LICENCE in FilterStage(FilterConfig(identity_similarity=True), context).licence_notice()
