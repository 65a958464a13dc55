from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from factory.commands.evaluate import CONSENSUS, anova_mean_squares, evaluate, f1_score, icc_3_1, print_report
from manifests.index import write_index
from manifests.schema import N_AUS
from manifests.vocab import DISFA_AUS
from manifests.writer import ShardWriter
from tests.manifests import make_record

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges. Their Table 4 gives
# BMS = 11.24, JMS = 32.49, EMS = 1.02 and ICC(3,1) = .71; by hand:
# ICC(3,1) = (11.24 - 1.02) / (11.24 + 3 * 1.02) = 10.22 / 14.30 = 0.7147.
SHROUT_FLEISS = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], dtype=float
)


def test_icc_3_1_textbook_example() -> None:
    bms, jms, ems = anova_mean_squares(SHROUT_FLEISS)
    assert (round(bms, 2), round(jms, 2), round(ems, 2)) == (11.24, 32.49, 1.02)
    assert icc_3_1(SHROUT_FLEISS) == pytest.approx(0.7147, abs=5e-4)


def test_icc_3_1_is_consistency_not_agreement() -> None:
    ratings = np.array([[0, 1], [2, 3], [5, 6], [1, 2]], dtype=float)  # rater 2 = rater 1 + 1
    assert icc_3_1(ratings) == pytest.approx(1.0)
    assert icc_3_1(np.ones((5, 2))) is None  # no variance: undefined, not 0 or 1
    with pytest.raises(ValueError, match="matrix"):
        icc_3_1(np.ones(4))


def test_f1_score() -> None:
    assert f1_score(3, 1, 2) == pytest.approx(6 / 9)
    assert f1_score(0, 0, 0) is None


N = 40
UNCERTAIN_ROWS = (0, 5, 9)  # consensus says -1 for AU1 on these rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    run_dir = tmp_path_factory.mktemp("evalrun")
    rng = np.random.default_rng(0)
    occurrence = rng.integers(0, 2, (N, N_AUS)).astype(np.int8)
    occurrence[0, :] = 1  # every AU occurs at least once
    occurrence[1, :] = 0
    intensity = (occurrence * rng.integers(1, 6, (N, N_AUS))).astype(np.int8)
    label_occ = occurrence.copy()
    label_occ[3, 1] = -1  # one uncertain dataset label (AU2)
    with ShardWriter(run_dir / "shards", "evalset", 0) as writer:
        for i in range(N):
            occ_f = occurrence[i].astype(float)
            votes = {
                "perfect": {"occurrence": occ_f, "intensity": intensity[i].astype(float)},
                "inverted": {"occurrence": 1.0 - occ_f, "intensity": 5.0 - intensity[i]},
                # Covers the first 6 AUs only; always says AU1 present; intensity off by +1.
                "partial": {
                    "occurrence": [1.0] + occ_f[1:6].tolist() + [None] * 6,
                    "intensity": (intensity[i, :6] + 1.0).tolist() + [None] * 6,
                },
            }
            record = make_record(0, i, rng, detectors=votes)
            consensus = occurrence[i].copy()
            if i in UNCERTAIN_ROWS:
                consensus[0] = -1
            record.update(
                au_occurrence=label_occ[i],
                au_intensity=intensity[i],
                consensus_occurrence=consensus,
                consensus_intensity=intensity[i].astype(np.float32),
            )
            writer.add(record)
        writer.add(make_record(0, N, rng, dropped_by="realism", drop_reason="low"))  # not evaluated
        writer.commit()
    write_index(run_dir, "evalset", [0], target=N, surplus=[], failed={})
    return run_dir, occurrence, intensity


def test_known_answers(dataset: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    run_dir, occurrence, _ = dataset
    report = evaluate(run_dir, out_dir=tmp_path)
    assert report.samples == N
    assert report.sources == ["perfect", "inverted", "partial", CONSENSUS]
    assert report.label_uncertain[2] == 1 and report.label_uncertain[1] == 0

    for s in report.for_source("perfect"):
        assert (s.f1, s.icc, s.mae, s.fp, s.fn) == (1.0, pytest.approx(1.0), 0.0, 0, 0)
        expected_n = N - (1 if s.au == 2 else 0)  # the uncertain label is left out
        assert s.n_occurrence == expected_n and s.tp + s.tn == expected_n
    assert report.means("perfect")["f1"] == 1.0
    assert all(s.f1 == 0.0 and s.tp == 0 for s in report.for_source("inverted"))

    au1 = report.score("partial", 1)
    positives = int(occurrence[:, 0].sum())
    assert (au1.tp, au1.fp, au1.fn, au1.tn) == (positives, N - positives, 0, 0)
    assert au1.f1 == pytest.approx(2 * positives / (2 * positives + N - positives))
    # A constant offset: ICC(3,1) (consistency) stays 1, MAE is the offset.
    assert au1.icc == pytest.approx(1.0) and au1.mae == pytest.approx(1.0)
    uncovered = report.score("partial", 26)
    assert (uncovered.f1, uncovered.icc, uncovered.n_occurrence, uncovered.excluded) == (None, None, 0, N)
    assert report.means("partial")["f1"] == pytest.approx(np.mean([s.f1 for s in report.for_source("partial")[:6]]))

    consensus_au1 = report.score(CONSENSUS, 1)
    assert consensus_au1.excluded == len(UNCERTAIN_ROWS)
    assert consensus_au1.n_occurrence == N - len(UNCERTAIN_ROWS)
    assert consensus_au1.f1 == 1.0

    # Saved files agree with the report.
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["means"]["perfect"]["f1"] == 1.0
    csv_lines = (tmp_path / "eval_per_au.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + 4 * len(DISFA_AUS)
    markdown = report.to_markdown()
    assert "| partial |" in markdown and "n/a" in markdown and "## ICC(3,1)" in markdown


def test_include_rejected_and_default_out_dir(dataset: tuple[Path, np.ndarray, np.ndarray]) -> None:
    run_dir = dataset[0]
    report = evaluate(run_dir, include_rejected=True)
    assert report.samples == N + 1
    assert (run_dir / "eval" / "eval.md").read_text() == report.to_markdown()


def test_print_report(dataset: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    from rich.console import Console

    console = Console(record=True, width=200)
    print_report(evaluate(dataset[0], out_dir=tmp_path), console)
    text = console.export_text()
    assert "F1 (occurrence)" in text and "inverted" in text and "AU26" in text
