"""The card's label fidelity when labels are exact: the consensus scored as `factory eval` scores it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from factory.commands.evaluate import CONSENSUS, evaluate
from manifests.card import render_card
from manifests.index import write_index
from manifests.schema import N_AUS
from manifests.writer import ShardWriter
from tests.manifests import make_record


def _write(run_dir: Path, label_source: str) -> None:
    rng = np.random.default_rng(7)
    with ShardWriter(run_dir / "shards", "mifa", 0) as writer:
        for index in range(10):
            record = make_record(0, index, rng, dropped_by="realism" if index == 9 else None, drop_reason="low")
            # The consensus misses some labels and is uncertain on one AU of one sample.
            occurrence = rng.integers(0, 2, N_AUS).astype(np.int8)
            occurrence[index % N_AUS] = -1
            record.update(
                label_source=label_source,
                consensus_occurrence=occurrence,
                consensus_intensity=np.clip(record["au_intensity"] + rng.integers(-1, 2, N_AUS), 0, 5).astype(
                    np.float32
                ),
            )
            writer.add(record)
        writer.commit({"attempt": 1})
    write_index(run_dir, "mifa", [0], target=9, surplus=[], failed={})


def test_the_card_scores_the_consensus_against_exact_labels_as_eval_does(tmp_path: Path) -> None:
    _write(tmp_path, "exact")
    card = render_card(tmp_path)
    section = card.split("## Label fidelity (exact labels)", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"(\d+) samples carry exact labels .* mean F1 ([\d.]+) .* mean MAE ([\d.]+)", section)
    assert found, section
    report = evaluate(tmp_path, tmp_path / "eval")  # every accepted sample is exact here
    means = report.means(CONSENSUS)
    assert int(found[1]) == 9
    assert float(found[2]) == round(means["f1"], 3) and float(found[3]) == round(means["mae"], 3)
    assert len(re.findall(r"^\| AU\d+ \| (?:[\d.]+|n/a) \| (?:[\d.]+|n/a) \|$", section, re.M)) == N_AUS
    au1 = report.score(CONSENSUS, 1)
    assert f"| AU1 | {au1.f1:.3f} | {au1.mae:.3f} |" in section


def test_no_fidelity_section_without_exact_labels(tmp_path: Path) -> None:
    _write(tmp_path, "planned")
    assert "Label fidelity" not in render_card(tmp_path)
