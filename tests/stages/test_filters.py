"""Filters: uncertain AUs, thresholds, order, identity similarity."""

from __future__ import annotations

from pathlib import Path

import pytest

from manifests.vocab import AU_INDEX, UNCERTAIN
from stages.base import StageContext, StageError, drop
from stages.filters import (
    FilterConfig,
    FilterStage,
    active_sets,
    intensity_filter,
    label_prompt_filter,
    label_prompt_intensity_error,
    label_prompt_jaccard,
    realism_filter,
)
from stages.pipeline import ChainError, Pipeline, StageSpec

N = 12


def vec(values: dict[int, int], default: int = 0) -> list[int]:
    out = [default] * N
    for au, v in values.items():
        out[AU_INDEX[au]] = v
    return out


def test_uncertain_aus_are_removed_from_both_sets() -> None:
    planned = vec({6: 3, 12: 4, 25: 2})
    cons = vec({6: UNCERTAIN, 12: 1, 25: 0, 26: UNCERTAIN})
    p, c = active_sets(planned, cons)
    assert p == {12, 25} and c == {12}
    assert label_prompt_jaccard(planned, cons) == pytest.approx(0.5)
    # everything uncertain: both sets empty -> consistent by definition
    assert label_prompt_jaccard(planned, [UNCERTAIN] * N) == 1.0
    # planned neutral, detectors see a smile
    assert label_prompt_jaccard([0] * N, vec({12: 1})) == 0.0


def test_active_sets_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="12 values"):
        active_sets([0] * 8, [0] * 12)


def test_filter_functions_thresholds() -> None:
    assert label_prompt_filter({"label_jaccard": 0.5}, 0.5) == (True, None)
    keep, reason = label_prompt_filter({"label_jaccard": 0.4}, 0.5)
    assert not keep and "0.400 < 0.500" in (reason or "")
    assert realism_filter({"realism_score": 0.1}, None) == (True, None)  # disabled
    keep, reason = realism_filter({}, 0.5)
    assert not keep and "no realism_score" in (reason or "")


def test_intensity_error_is_the_mean_over_the_aus_the_consensus_rated() -> None:
    planned = vec({1: 4, 12: 3})
    rated = [None] * N
    rated[AU_INDEX[1]], rated[AU_INDEX[12]], rated[AU_INDEX[25]] = 1.0, 3.0, 0.5
    rated[AU_INDEX[2]] = float(UNCERTAIN)  # uncertain: left out like an AU no detector covers
    assert label_prompt_intensity_error(planned, rated) == pytest.approx((3.0 + 0.0 + 0.5) / 3)
    assert label_prompt_intensity_error(planned, [None] * N) is None  # nothing rated: no evidence
    record = {"planned_intensity": planned, "consensus_intensity": rated}
    assert intensity_filter(record, None) == (True, None)  # off by default
    assert intensity_filter(record, 1.2) == (True, None)
    keep, reason = intensity_filter(record, 1.0)
    assert not keep and reason == "label-prompt intensity error 1.167 > 1.000"
    keep, reason = intensity_filter({"planned_intensity": planned}, 1.0)
    assert not keep and "no consensus_intensity" in (reason or "")
    # in the stage it applies after the Jaccard filter, before realism
    stage = _stage(max_label_intensity_error=1.0, min_realism=None)
    sample = {"key": "k", "consensus_occurrence": vec({1: 1, 12: 1}), **record}
    stage.process([sample])
    assert sample["dropped_by"] == "filters" and sample["drop_reason"] == "label-prompt intensity error 1.167 > 1.000"


def _stage(**cfg: object) -> FilterStage:
    stage = FilterStage(FilterConfig(**cfg), StageContext(run_dir=Path(".")))
    stage.setup()
    return stage


def test_stage_records_scores_and_drops_on_first_failure() -> None:
    good = {"key": "g", "planned_intensity": vec({12: 3}), "consensus_occurrence": vec({12: 1}), "realism_score": 0.9}
    bad_labels = {
        "key": "l",
        "planned_intensity": vec({12: 3}),
        "consensus_occurrence": vec({4: 1}),
        "realism_score": 0.1,
    }
    bad_realism = {
        "key": "r",
        "planned_intensity": vec({12: 3}),
        "consensus_occurrence": vec({12: 1}),
        "realism_score": 0.2,
    }
    dead = drop({"key": "d"}, "face", "no face")
    _stage().process([good, bad_labels, bad_realism, dead])
    assert not good.get("dropped_by") and good["label_jaccard"] == 1.0
    assert bad_labels["dropped_by"] == "filters" and "jaccard" in bad_labels["drop_reason"]
    assert bad_labels["label_jaccard"] == 0.0  # scores recorded for dropped samples too
    assert bad_realism["dropped_by"] == "filters" and "realism" in bad_realism["drop_reason"]
    assert dead["dropped_by"] == "face" and "label_jaccard" not in dead


def test_a_chain_without_the_consensus_is_refused_before_it_runs() -> None:
    assert {"consensus_occurrence", "planned_intensity"} <= FilterStage.reads
    chain = [StageSpec("prompt", "prompt"), StageSpec("generator", "warp"), StageSpec("filters", "filters")]
    with pytest.raises(ChainError, match=r"stage filters \(filters\) reads field 'consensus_occurrence'"):
        Pipeline.check(chain)
    Pipeline.check([*chain[:2], StageSpec("agreement", "agreement"), chain[2]])


def test_identity_option_needs_a_bank() -> None:
    with pytest.raises(StageError, match="identity bank"):
        _stage(identity_similarity=True)


def test_identity_similarity_same_vs_other_person() -> None:
    from manifests.bank import open_bank
    from stages.faces.landmarks import detect_faces

    bank = open_bank("builtin")
    stage = FilterStage(
        FilterConfig(identity_similarity=True, min_label_jaccard=None, min_realism=None),
        StageContext(run_dir=Path("."), identity_bank=bank),
    )
    stage.setup()
    records = []
    for source, claimed in (
        ("builtin-grace-hopper", "builtin-grace-hopper"),
        ("builtin-astronaut", "builtin-grace-hopper"),
    ):
        image = bank.image(source)
        face = detect_faces(image)[0]
        records.append(
            {
                "key": source,
                "identity_id": claimed,
                "image": image,
                "landmarks": face.landmarks,
                "planned_intensity": [0] * N,
                "consensus_occurrence": [0] * N,
            }
        )
    stage.process(records)
    same, other = records
    assert same["identity_similarity"] > 0.99 and not same.get("dropped_by")
    assert other["identity_similarity"] < 0.9 and other["dropped_by"] == "filters"
    assert "identity" in other["drop_reason"]


def test_offline_verification_chain_fills_manifest_columns() -> None:
    """face -> geometric + appearance -> agreement -> heuristic realism -> filters on a real
    photo; every column these stages set must convert to its manifest Arrow type."""
    import pyarrow as pa

    from manifests.bank import open_bank
    from manifests.schema import MANIFEST_SCHEMA
    from stages.agreement import AgreementConfig, AgreementStage
    from stages.detectors.appearance import AppearanceAUDetector, AppearanceConfig
    from stages.detectors.geometric import GeometricAUDetector, GeometricConfig
    from stages.faces.dlib import DlibFaceConfig, DlibFaceStage
    from stages.realism.heuristic import HeuristicRealism, HeuristicRealismConfig

    bank = open_bank("builtin")
    context = StageContext(run_dir=Path("."), identity_bank=bank)
    chain = [
        DlibFaceStage(DlibFaceConfig(), context),
        GeometricAUDetector(GeometricConfig(), context),
        AppearanceAUDetector(AppearanceConfig(), context),
        AgreementStage(AgreementConfig(labels="consensus"), context),
        HeuristicRealism(HeuristicRealismConfig(), context),
        FilterStage(FilterConfig(min_label_jaccard=0.0), context),
    ]
    # The exemplar photo itself, planned neutral: geometry must read it as neutral.
    batch = [
        {
            "key": "000000_00000",
            "identity_id": "builtin-grace-hopper",
            "planned_intensity": [0] * N,
            "label_source": "planned",
            "image": bank.image("builtin-grace-hopper"),
        }
    ]
    for stage in chain:
        stage.setup()
        batch = stage.process(batch)
    rec = batch[0]
    assert not rec.get("dropped_by"), rec.get("drop_reason")
    geometric = rec["detector_votes"]["geometric"]
    assert max(geometric["intensity"]) < 0.5
    assert [v["detector"] for v in rec["votes"]] == ["appearance", "geometric"]
    assert rec["label_source"] == "consensus" and rec["realism_scorer"] == "heuristic-v1"
    columns = [
        "face_score",
        "face_box",
        "votes",
        "consensus_occurrence",
        "consensus_intensity",
        "agreement_score",
        "au_occurrence",
        "au_intensity",
        "label_jaccard",
        "realism_score",
        "realism_scorer",
        "label_source",
    ]
    for name in columns:
        field = MANIFEST_SCHEMA.field(name)
        pa.array([rec[name]], type=field.type)  # raises if the value does not fit the column
