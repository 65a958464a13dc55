"""MAUGen's defaults are its release's (AU cue kept, its negative prompt); a UNet saved in
training mode (with ``learnable_tokens``) loads, every other extra key is still refused."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.tiny_models import build_tiny_maugen
from manifests.bank import open_bank
from stages.base import StageContext, StageError
from stages.generators.maugen.checkpoint import DEFAULT_FILES
from stages.generators.maugen.pipeline import MaugenPipeline
from stages.generators.maugen.stage import (
    RELEASE_NEGATIVE_PROMPT,
    SHORT_NEGATIVE_PROMPT,
    MaugenConfig,
    MaugenGenerator,
)
from stages.generators.maugen.unet import IGNORED_PREFIXES

SIZE = 64


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_maugen(tmp_path_factory.mktemp("tiny_maugen_defaults") / "release")


def _generator(ckpt: Path, **options: Any) -> MaugenGenerator:
    gen = MaugenGenerator(
        MaugenConfig(checkpoint_dir=str(ckpt), steps=2, **options),
        StageContext(run_dir=Path("."), image_size=SIZE, identity_bank=open_bank("builtin")),
    )
    gen.setup()
    return gen


def _with_unet_key(ckpt: Path, tmp_path: Path, key: str) -> Path:
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    sd = torch.load(copy / DEFAULT_FILES.unet, weights_only=True)
    sd[key] = torch.randn(12, 8)
    torch.save(sd, copy / DEFAULT_FILES.unet)
    return copy


def _record() -> dict[str, Any]:
    return {"description": "a person smiling", "identity_id": "builtin-astronaut", "seed": 3}


def test_defaults_are_the_release_inference_script() -> None:
    cfg = MaugenConfig()
    assert cfg.au_cue_mode == "fixed"
    assert cfg.negative_prompt == "release"
    assert (cfg.steps, cfg.guidance_scale) == (30, 7.5)
    # The release's text starts with its weighted group and ends with the wrinkle terms.
    assert RELEASE_NEGATIVE_PROMPT.startswith("(deformed iris, deformed pupils")
    assert RELEASE_NEGATIVE_PROMPT.endswith("exaggerated skin folds)")
    assert len(SHORT_NEGATIVE_PROMPT) < len(RELEASE_NEGATIVE_PROMPT) / 3


def test_training_mode_unet_with_learnable_tokens_loads_the_same(ckpt: Path, tmp_path: Path) -> None:
    trained = MaugenPipeline.from_checkpoint(_with_unet_key(ckpt, tmp_path, "learnable_tokens"))
    saved = torch.load(ckpt / DEFAULT_FILES.unet, weights_only=True)
    loaded = trained.unet.state_dict()
    assert "learnable_tokens" not in loaded
    for key, value in saved.items():  # every tensor of the file is in the model as saved
        assert key.startswith(IGNORED_PREFIXES) or torch.equal(loaded[key], value), key


def test_any_other_extra_unet_key_is_still_refused(ckpt: Path, tmp_path: Path) -> None:
    broken = _with_unet_key(ckpt, tmp_path, "learnable_tokens_extra")
    with pytest.raises(StageError, match="learnable_tokens_extra") as err:
        _generator(broken)
    assert str(broken / DEFAULT_FILES.unet) in str(err.value)


def test_negative_prompt_names_and_text(ckpt: Path) -> None:
    assert MaugenConfig().negative_text == RELEASE_NEGATIVE_PROMPT
    assert MaugenConfig(negative_prompt="short").negative_text == SHORT_NEGATIVE_PROMPT
    assert MaugenConfig(negative_prompt="no hats").negative_text == "no hats"
    gen = _generator(ckpt)
    release = gen.process([_record()])[0]
    gen.config = gen.config.model_copy(update={"negative_prompt": "short"})
    short = gen.process([_record()])[0]
    assert not np.array_equal(release["image"], short["image"])  # the negative branch reads it
