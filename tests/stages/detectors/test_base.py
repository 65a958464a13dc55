"""The mapping layer on each vocabulary and scale, and AUDetector.process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from manifests.vocab import AU_INDEX, DISFA_AUS
from stages.base import StageContext, StageError, drop
from stages.detectors.base import VOCABULARIES, AUDetector, MeasuringDetector, covered_aus, parse_au_name, to_disfa


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("AU1", (1, None)),
        ("AU01", (1, None)),
        ("au_12", (12, None)),
        ("AU12L", (12, "L")),
        ("AU12_R", (12, "R")),
        ("AUL1", (1, "L")),
        ("R14", (14, "R")),
        ("L_AU4", (4, "L")),
        ("left AU2", (2, "L")),
        ("26", (26, None)),
        (9, (9, None)),
    ],
)
def test_parse_au_name(name: str | int, expected: tuple[int, str | None]) -> None:
    assert parse_au_name(name) == expected


@pytest.mark.parametrize("bad", ["AU", "smile", "LAUR1", "AU1X"])
def test_parse_au_name_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot read AU name"):
        parse_au_name(bad)


@pytest.mark.parametrize(
    ("vocab", "n", "covered"),
    [
        ("disfa8", 8, (1, 2, 4, 6, 9, 12, 25, 26)),
        ("disfa12", 12, DISFA_AUS),
        ("bp4d12", 12, (1, 2, 4, 6, 12, 15, 17)),
        ("openface18", 18, DISFA_AUS),
        ("pyfeat20", 20, DISFA_AUS),
        ("opengraphau41", 41, DISFA_AUS),
    ],
)
def test_vocabulary_sizes_and_coverage(vocab: str, n: int, covered: tuple[int, ...]) -> None:
    names = VOCABULARIES[vocab]
    assert len(names) == n
    assert covered_aus(names) == covered


@pytest.mark.parametrize("vocab", ["disfa8", "bp4d12", "openface18", "pyfeat20", "opengraphau41"])
def test_probability_row_maps_each_au_and_leaves_uncovered_missing(vocab: str) -> None:
    names = VOCABULARIES[vocab]
    # Give every column a value that encodes its own AU so we can check the routing.
    row = np.array([parse_au_name(n)[0] / 100.0 for n in names])
    vote = to_disfa(row, names, "probability")
    covered = covered_aus(names)
    for au in DISFA_AUS:
        i = AU_INDEX[au]
        if au in covered:
            assert vote["occurrence"][i] == pytest.approx(au / 100.0)
        else:
            assert vote["occurrence"][i] is None
        assert vote["intensity"][i] is None  # probability scale: occurrence only


def test_left_right_variants_combine_by_max() -> None:
    names = VOCABULARIES["opengraphau41"]
    row = np.full(len(names), 0.1)
    row[names.index("AUL12")] = 0.9
    row[names.index("AUR12")] = 0.2
    row[names.index("AU12")] = 0.3
    row[names.index("AUR1")] = 0.7
    vote = to_disfa(row, names, "probability")
    assert vote["occurrence"][AU_INDEX[12]] == pytest.approx(0.9)
    assert vote["occurrence"][AU_INDEX[1]] == pytest.approx(0.7)
    assert vote["occurrence"][AU_INDEX[5]] == pytest.approx(0.1)


def test_lr_only_vocabulary_and_nan_handling() -> None:
    names = ("AU1L", "AU1R", "AU12L", "AU12R", "AU25")
    vote = to_disfa([np.nan, 0.4, np.nan, np.nan, 0.8], names, "probability")
    assert vote["occurrence"][AU_INDEX[1]] == pytest.approx(0.4)  # NaN side ignored
    assert vote["occurrence"][AU_INDEX[12]] is None  # all sides NaN: missing, not 0
    assert vote["occurrence"][AU_INDEX[25]] == pytest.approx(0.8)
    assert vote["occurrence"][AU_INDEX[4]] is None


def test_binary_scale_thresholds_and_gives_no_intensity() -> None:
    names = VOCABULARIES["disfa8"]
    vote = to_disfa([1, 0, 1, 0, 0.7, 0.2, 1, 0], names, "binary")
    occ = {au: vote["occurrence"][AU_INDEX[au]] for au in covered_aus(names)}
    assert occ == {1: 1.0, 2: 0.0, 4: 1.0, 6: 0.0, 9: 1.0, 12: 0.0, 25: 1.0, 26: 0.0}
    assert all(v is None for v in vote["intensity"])


def test_intensity_scale_gives_both_and_clips() -> None:
    names = VOCABULARIES["disfa12"]
    row = [0.0, 0.3, 0.5, 2.0, 5.0, 7.0, -1.0, np.nan, 1.0, 3.3, 0.49, 4.0]
    vote = to_disfa(row, names, "intensity_0_5")
    assert vote["intensity"][:7] == pytest.approx([0.0, 0.3, 0.5, 2.0, 5.0, 5.0, 0.0])
    assert vote["intensity"][7] is None and vote["occurrence"][7] is None
    assert vote["occurrence"][:7] == pytest.approx([0.0, 0.3, 0.5, 1.0, 1.0, 1.0, 0.0])
    # occurrence >= 0.5 exactly when the rounded intensity is an active level
    for occ, inten in zip(vote["occurrence"], vote["intensity"], strict=True):
        if occ is not None:
            assert (occ >= 0.5) == (round(inten + 1e-9) >= 1)


def test_probability_detector_with_declared_intensity_head() -> None:
    names = VOCABULARIES["disfa8"]
    heads = ("AU12", "AU25")
    vote = to_disfa([0.5] * 8, names, "probability", intensity_row=[3.0, 9.0], intensity_vocabulary=heads)
    assert vote["intensity"][AU_INDEX[12]] == 3.0
    assert vote["intensity"][AU_INDEX[25]] == 5.0
    assert vote["intensity"][AU_INDEX[1]] is None


def test_to_disfa_rejects_mismatch_and_bad_scale() -> None:
    with pytest.raises(ValueError, match="vocabulary names 8"):
        to_disfa([0.1, 0.2], VOCABULARIES["disfa8"], "probability")
    with pytest.raises(ValueError, match="unknown detector scale"):
        to_disfa([0.1] * 8, VOCABULARIES["disfa8"], "logits")  # type: ignore[arg-type]


class _FixedDetector(AUDetector):
    name = "fixed"
    vocabulary = ("AU1L", "AU1R", "AU12")
    scale = "intensity_0_5"
    preprocessing = "none (test double)"
    licence = "Apache-2.0"

    def __init__(self, rows: np.ndarray, **kw: object) -> None:
        super().__init__(self.config_model(), StageContext(run_dir=Path(".")))
        self.rows = rows

    def predict(self, batch: list[dict]) -> np.ndarray:
        return self.rows[: len(batch)]


def test_process_writes_votes_and_skips_dropped() -> None:
    det = _FixedDetector(np.array([[1.0, 2.0, np.nan], [0.0, 0.0, 4.0]]))
    a: dict = {"key": "a"}
    b: dict = {"key": "b", "detector_votes": {"other": {}}}
    dead = drop({"key": "c"}, "face", "no face")
    out = det.process([a, dead, b])
    assert out == [a, dead, b]
    assert a["detector_votes"]["fixed"]["intensity"][AU_INDEX[1]] == 2.0
    assert a["detector_votes"]["fixed"]["occurrence"][AU_INDEX[12]] is None
    assert set(b["detector_votes"]) == {"other", "fixed"}
    assert b["detector_votes"]["fixed"]["intensity"][AU_INDEX[12]] == 4.0
    assert "detector_votes" not in dead
    assert covered_aus(det.vocabulary) == (1, 12)


def test_process_refuses_wrong_shape() -> None:
    det = _FixedDetector(np.zeros((2, 2)))
    with pytest.raises(StageError, match="expected \\(2, 3\\)"):
        det.process([{"key": "a"}, {"key": "b"}])


class _ReadsLevels(MeasuringDetector):
    """Measures each record's ``face_score`` as the AU1 and AU12 intensities (a test double)."""

    name = "reads-levels"
    vocabulary = intensity_vocabulary = ("AU1", "AU12")
    licence = "Apache-2.0"

    def __init__(self) -> None:
        super().__init__(self.config_model(), StageContext(run_dir=Path(".")))

    def measure(self, record: dict) -> np.ndarray:
        return np.full(2, float(record["face_score"]))

    def thresholds(self, record: dict) -> np.ndarray:
        return np.full(2, 2.5)


def test_measuring_detector_keeps_nothing_between_calls() -> None:
    det = _ReadsLevels()
    first = [{"key": "a", "face_score": 1.0}, {"key": "b", "face_score": 4.0}]
    second = [{"key": "c", "face_score": 5.0}, {"key": "d", "face_score": 0.0}]
    occurrence, levels = det.outputs(first)
    assert levels.tolist() == [[1.0, 1.0], [4.0, 4.0]]
    assert occurrence[0, 0] < 0.5 < occurrence[1, 0]
    # Another batch of the same size gets its own intensities, not the last predict()'s.
    det.predict(first)
    intensity = det.predict_intensity(second)
    assert intensity is not None and intensity.tolist() == [[5.0, 5.0], [0.0, 0.0]]
    assert not any(isinstance(v, np.ndarray) for v in vars(det).values())
    det.process(second)
    assert second[0]["detector_votes"]["reads-levels"]["intensity"][AU_INDEX[12]] == 5.0
