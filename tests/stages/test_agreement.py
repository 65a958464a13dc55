"""The agreement rule on constructed votes, and the final-label choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from manifests.vocab import AU_INDEX, UNCERTAIN
from stages.agreement import AgreementConfig, AgreementStage, consensus
from stages.base import StageContext, drop

N = 12


def vote(occ: dict[int, float], inten: dict[int, float] | None = None) -> dict:
    """A detector vote covering only the AUs in ``occ``."""
    o: list[float | None] = [None] * N
    i: list[float | None] = [None] * N
    for au, p in occ.items():
        o[AU_INDEX[au]] = p
    for au, v in (inten or {}).items():
        i[AU_INDEX[au]] = v
    return {"occurrence": o, "intensity": i}


def at(vec: list, au: int):
    return vec[AU_INDEX[au]]


def test_unanimous_active_gives_median_intensity() -> None:
    votes = {
        "a": vote({12: 0.9}, {12: 3.0}),
        "b": vote({12: 0.8}, {12: 3.5}),
        "c": vote({12: 0.7}, {12: 2.6}),
    }
    r = consensus(votes)
    assert at(r["occurrence"], 12) == 1
    assert at(r["intensity"], 12) == pytest.approx(3.0)
    assert r["score"] == pytest.approx(1.0)


def test_unanimous_inactive_gives_zero_intensity() -> None:
    r = consensus({"a": vote({4: 0.1}, {4: 0.2}), "b": vote({4: 0.2})})
    assert at(r["occurrence"], 4) == 0
    assert at(r["intensity"], 4) == 0.0


def test_two_detectors_split_is_uncertain() -> None:
    r = consensus({"a": vote({1: 0.9}), "b": vote({1: 0.1})})
    assert at(r["occurrence"], 1) == UNCERTAIN
    assert at(r["intensity"], 1) == UNCERTAIN
    assert r["score"] == pytest.approx(0.5)


def test_majority_of_three_decides() -> None:
    votes = {
        "a": vote({25: 0.9}, {25: 2.0}),
        "b": vote({25: 0.6}, {25: 2.4}),
        "c": vote({25: 0.2}, {25: 0.0}),
    }
    r = consensus(votes)
    assert at(r["occurrence"], 25) == 1
    # only the agreeing detectors' intensities count: median of 2.0 and 2.4
    assert at(r["intensity"], 25) == pytest.approx(2.2)
    assert r["score"] == pytest.approx(2 / 3)


def test_two_of_four_is_not_a_majority() -> None:
    votes = {k: vote({6: p}) for k, p in zip("abcd", (0.9, 0.9, 0.1, 0.1), strict=True)}
    assert at(consensus(votes)["occurrence"], 6) == UNCERTAIN
    votes["e"] = vote({6: 0.7})
    assert at(consensus(votes)["occurrence"], 6) == 1  # 3 of 5


def test_missing_coverage_single_detector_needs_min_agree_1() -> None:
    votes = {"a": vote({1: 0.9, 2: 0.1}), "b": vote({2: 0.2})}
    r = consensus(votes)
    assert at(r["occurrence"], 1) == UNCERTAIN  # only one detector covers AU1
    assert at(r["occurrence"], 2) == 0
    assert at(r["occurrence"], 26) == UNCERTAIN  # nobody covers AU26
    r1 = consensus(votes, min_agree=1)
    assert at(r1["occurrence"], 1) == 1
    # score averages over covered AUs only (AU1 and AU2, both unanimous)
    assert r["score"] == pytest.approx(1.0)


def test_no_votes_at_all() -> None:
    r = consensus({})
    assert r["occurrence"] == [UNCERTAIN] * N and r["score"] is None


def test_intensity_spread_over_tolerance_is_uncertain() -> None:
    votes = {"a": vote({12: 0.9}, {12: 1.0}), "b": vote({12: 0.9}, {12: 4.0})}
    r = consensus(votes, intensity_tolerance=1.0)
    assert at(r["occurrence"], 12) == 1
    assert at(r["intensity"], 12) == UNCERTAIN
    r2 = consensus(votes, intensity_tolerance=3.0)
    assert at(r2["intensity"], 12) == pytest.approx(2.5)


def test_probability_only_detectors_leave_active_intensity_uncertain() -> None:
    r = consensus({"a": vote({9: 0.9}), "b": vote({9: 0.95})})
    assert at(r["occurrence"], 9) == 1 and at(r["intensity"], 9) == UNCERTAIN


def _stage(**cfg: object) -> AgreementStage:
    return AgreementStage(AgreementConfig(**cfg), StageContext(run_dir=Path(".")))


def test_stage_auto_uses_exact_generator_labels() -> None:
    gen_occ = [0.0] * N
    gen_int = [0.0] * N
    gen_occ[AU_INDEX[12]], gen_int[AU_INDEX[12]] = 1.0, 2.5
    rec = {
        "key": "k",
        "label_source": "exact",
        "generator_occurrence": gen_occ,
        "generator_intensity": gen_int,
        "detector_votes": {"z": vote({12: 0.1}), "a": vote({12: 0.2})},
    }
    _stage().process([rec])
    assert at(rec["au_occurrence"], 12) == 1 and at(rec["au_intensity"], 12) == 3  # 2.5 rounds up
    assert at(rec["consensus_occurrence"], 12) == 0
    assert rec["label_source"] == "exact"
    assert [v["detector"] for v in rec["votes"]] == ["a", "z"]


def test_stage_auto_falls_back_to_consensus_for_planned_labels() -> None:
    rec = {
        "key": "k",
        "label_source": "planned",
        "detector_votes": {"a": vote({12: 0.9, 4: 0.9}, {12: 0.3}), "b": vote({12: 0.8, 4: 0.1}, {12: 0.4})},
    }
    _stage().process([rec])
    assert rec["label_source"] == "consensus"
    assert at(rec["au_occurrence"], 12) == 1
    assert at(rec["au_intensity"], 12) == 1  # active never gets intensity 0
    assert at(rec["au_occurrence"], 4) == UNCERTAIN and at(rec["au_intensity"], 4) == UNCERTAIN
    assert at(rec["au_occurrence"], 26) == UNCERTAIN


def test_stage_generator_mode_without_generator_labels_is_an_error() -> None:
    from stages.base import StageError

    with pytest.raises(StageError, match="generator_occurrence"):
        _stage(labels="generator").process([{"key": "k", "detector_votes": {}}])


def test_stage_skips_dropped_and_config_validates() -> None:
    dead = drop({"key": "d"}, "face", "no face")
    _stage().process([dead])
    assert "consensus_occurrence" not in dead
    with pytest.raises(ValueError):
        AgreementConfig(min_agree=0)
    with pytest.raises(ValueError):
        AgreementConfig(labels="vote")  # type: ignore[arg-type]
