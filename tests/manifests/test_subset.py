from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pytest

from factory.commands.evaluate import evaluate
from manifests.export import export
from manifests.index import write_index
from manifests.query import query
from manifests.subset import Selection, SubsetError, balanced_quotas, make_subset, parse_min_intensity
from manifests.verify import verify_dataset
from manifests.vocab import DISFA_AUS
from manifests.writer import ShardWriter
from tests.manifests import make_record

AU12 = DISFA_AUS.index(12)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """4 shards of 10; every 5th sample rejected with its image kept; varied scores and groups."""
    run_dir = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(3)
    records = []
    for shard in range(4):
        with ShardWriter(run_dir / "shards", "mifa", shard, keep_rejected_images=True) as writer:
            for i in range(10):
                record = make_record(shard, i, rng, size=16)
                record["ethnicity"] = ("white", "black", "east_asian")[(shard * 10 + i) % 3 if i % 4 else 0]
                record["agreement_score"] = np.float32(1.0 if i % 2 else 0.5)
                if i % 3 == 0:
                    record["consensus_occurrence"][0] = -1
                if i % 5 == 4:
                    record.update(dropped_by="realism", drop_reason="low")
                writer.add(record)
                records.append(record)
            writer.commit()
    write_index(run_dir, "mifa", [0, 1, 2, 3], target=30, surplus=[], failed={})
    return run_dir, records


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def test_presets_select_what_they_say(source: tuple[Path, list[dict]], tmp_path: Path) -> None:
    run_dir, records = source
    selection = Selection(consensus="full", min_intensity=((12, 3),), emotions=("happiness", "sadness"))
    index = make_subset(run_dir, tmp_path / "s", selection)
    expected = sorted(
        r["key"]
        for r in records
        if r["agreement_score"] >= 1.0
        and -1 not in r["consensus_occurrence"].tolist()
        and r["au_intensity"][AU12] >= 3
        and r["emotion"] in ("happiness", "sadness")
    )
    assert len(expected) > 0 and sorted(query(tmp_path / "s")["key"].to_pylist()) == expected
    assert index["samples"] == len(expected)
    # Rejected samples with a kept image are selectable; --accepted-only leaves them out.
    everything = make_subset(run_dir, tmp_path / "all", Selection())
    accepted = make_subset(run_dir, tmp_path / "acc", Selection(accepted_only=True))
    assert everything["samples"] == 40 and everything["accepted"] == 32
    assert accepted["samples"] == accepted["accepted"] == 32


def test_balanced_sample_is_balanced_and_seeded(source: tuple[Path, list[dict]], tmp_path: Path) -> None:
    run_dir, records = source
    pool = Counter(r["ethnicity"] for r in records)
    assert pool["white"] > pool["black"]  # an unbalanced source
    select = Selection(balance=("ethnicity",), limit=15, seed=1)
    make_subset(run_dir, tmp_path / "a", select)
    make_subset(run_dir, tmp_path / "b", select)
    make_subset(run_dir, tmp_path / "c", Selection(balance=("ethnicity",), limit=15, seed=2))
    keys = {name: sorted(query(tmp_path / name)["key"].to_pylist()) for name in "abc"}
    counts = Counter(query(tmp_path / "a")["ethnicity"].to_pylist())
    assert sorted(counts.values()) == [5, 5, 5]  # 15 over three groups that all have enough
    assert keys["a"] == keys["b"]  # same seed, same subset
    assert keys["a"] != keys["c"]


def test_balanced_quotas_water_fill() -> None:
    assert balanced_quotas({("a",): 100, ("b",): 100, ("c",): 100}, 30) == {("a",): 10, ("b",): 10, ("c",): 10}
    # A small group gives all it has; the others share the rest.
    assert balanced_quotas({("a",): 2, ("b",): 100, ("c",): 100}, 30) == {("a",): 2, ("b",): 14, ("c",): 14}
    assert sum(balanced_quotas({("a",): 5, ("b",): 7}, 100).values()) == 12
    assert balanced_quotas({("a",): 10, ("b",): 10}, 5) == {("a",): 3, ("b",): 2}


def test_subset_is_a_dataset_and_the_source_is_untouched(source: tuple[Path, list[dict]], tmp_path: Path) -> None:
    run_dir, records = source
    before = _tree_hash(run_dir)
    subset = tmp_path / "s"
    make_subset(run_dir, subset, Selection(where="au_occ(12) = 1", accepted_only=True))
    expected = sorted(r["key"] for r in records if r["au_occurrence"][AU12] == 1 and not r.get("dropped_by"))
    assert sorted(query(subset)["key"].to_pylist()) == expected
    # No image copied: the subset folder holds its index only.
    assert sorted(p.name for p in subset.iterdir()) == ["DATASET_CARD.md", "index.json", "index.parquet"]
    keys = duckdb.sql(f"SELECT key FROM read_parquet('{subset / 'index.parquet'}') ORDER BY key").fetchall()
    assert [k for (k,) in keys] == expected  # DuckDB reads the subset's index
    assert verify_dataset(subset).ok
    assert evaluate(subset, out_dir=tmp_path / "eval").samples == len(expected)
    assert export(subset, tmp_path / "out", format="folder")["samples"] == len(expected)
    # A subset of a subset refers to the same source shards.
    make_subset(subset, tmp_path / "s2", Selection(emotions=("happiness",)))
    inner = sorted(r["key"] for r in records if r["key"] in expected and r["emotion"] == "happiness")
    assert sorted(query(tmp_path / "s2")["key"].to_pylist()) == inner
    assert _tree_hash(run_dir) == before


def test_subset_target_rules(source: tuple[Path, list[dict]], tmp_path: Path) -> None:
    run_dir, _ = source
    make_subset(run_dir, tmp_path / "s", Selection(limit=3))
    with pytest.raises(SubsetError, match="--overwrite"):
        make_subset(run_dir, tmp_path / "s", Selection(limit=4))
    assert make_subset(run_dir, tmp_path / "s", Selection(limit=4), overwrite=True)["samples"] == 4
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("x")
    with pytest.raises(SubsetError, match="not a subset"):
        make_subset(run_dir, foreign, Selection(), overwrite=True)
    with pytest.raises(SubsetError, match="source itself"):
        make_subset(run_dir, run_dir, Selection())


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (Selection(balance=("ethnicity",)), "needs --limit"),
        (Selection(balance=("au_occurrence",), limit=3), "not a column to balance"),
        (Selection(consensus="most"), "--consensus 'most'"),
        (Selection(emotions=("joy",)), "--emotion 'joy'"),
        (Selection(limit=-1), "--limit"),
    ],
)
def test_bad_options_name_the_option(selection: Selection, message: str) -> None:
    with pytest.raises(SubsetError, match=message):
        selection.check()


def test_parse_min_intensity() -> None:
    assert parse_min_intensity("AU12=3") == (12, 3)
    assert parse_min_intensity("au06>=2") == (6, 2)
    with pytest.raises(SubsetError, match="AU12=3"):
        parse_min_intensity("smile")
    with pytest.raises(ValueError, match="AU 3 is not labelled"):
        Selection(min_intensity=((3, 1),)).conditions()
