from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from manifests.index import write_index
from manifests.query import au_filter, drop_code, expand_au_shorthand, query, summary
from manifests.vocab import DISFA_AUS
from manifests.writer import ShardWriter
from tests.manifests import make_record, write_shard


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    run_dir = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    records: list[dict] = []
    for shard in range(3):
        recs, _ = write_shard(run_dir / "shards", "mifa", shard, 8, rng=rng, drop_every=4)
        records += recs
    # Shard 2 is surplus: written but not indexed, so queries must not see it.
    write_index(run_dir, "mifa", [0, 1], target=10, surplus=[2], failed={})
    return run_dir, [r for r in records if r["shard"] in (0, 1)]


def _accepted(records: list[dict]) -> list[dict]:
    return [r for r in records if not r.get("dropped_by")]


def test_samples_view_accepted_only(built: tuple[Path, list[dict]]) -> None:
    run_dir, records = built
    table = query(run_dir)
    assert sorted(table["key"].to_pylist()) == sorted(r["key"] for r in _accepted(records))
    everything = query(run_dir, include_rejected=True)
    assert everything.num_rows == len(records) == 16
    assert sum(not a for a in everything["accepted"].to_pylist()) == 4


def test_au_macro_and_shorthand_match_one_based_list_index(built: tuple[Path, list[dict]]) -> None:
    run_dir, records = built
    expected = sorted(r["key"] for r in _accepted(records) if r["au_occurrence"][DISFA_AUS.index(12)] == 1)
    assert 0 < len(expected) < 12  # the fixture has both values for AU12
    by_index = query(run_dir, sql="SELECT key FROM samples WHERE au_occurrence[7] = 1")["key"].to_pylist()
    by_macro = query(run_dir, where="au_occurrence[au(12)] = 1")["key"].to_pylist()
    by_shorthand = query(run_dir, where="au_occ(12) = 1")["key"].to_pylist()
    by_helper = query(run_dir, where=au_filter(12))["key"].to_pylist()
    assert sorted(by_index) == sorted(by_macro) == sorted(by_shorthand) == sorted(by_helper) == expected
    # Intensities through the macro and the shorthand.
    table = query(run_dir, sql="SELECT key, au_intensity[au(26)] AS a, au_int(26) AS b FROM samples ORDER BY key")
    want = {r["key"]: int(r["au_intensity"][-1]) for r in _accepted(records)}
    assert dict(zip(table["key"].to_pylist(), table["a"].to_pylist(), strict=True)) == want
    assert table["a"].to_pylist() == table["b"].to_pylist()
    # An AU MIFA does not label: NULL position from the macro, an error from the shorthand.
    assert query(run_dir, sql="SELECT au(3) AS p")["p"].to_pylist() == [None]
    with pytest.raises(ValueError, match="AU 3 is not labelled"):
        query(run_dir, where="au_occ(3) = 1")
    with pytest.raises(ValueError, match="AU 3 is not labelled"):
        au_filter(3)


def test_expand_au_shorthand() -> None:
    assert expand_au_shorthand("au_occ(12) = 1 AND AU_INT( 6 ) >= 3") == "au_occurrence[7] = 1 AND au_intensity[5] >= 3"
    assert expand_au_shorthand("my_au_occ(12)") == "my_au_occ(12)"  # only the whole word


def test_sql_and_where_are_exclusive(built: tuple[Path, list[dict]]) -> None:
    with pytest.raises(ValueError, match="either sql"):
        query(built[0], sql="SELECT 1", where="true")


def test_summary_counts(built: tuple[Path, list[dict]]) -> None:
    run_dir, records = built
    accepted = _accepted(records)
    result = summary(run_dir)
    assert (result["planned"], result["accepted"], result["rejected"]) == (16, 12, 4)
    assert result["drop_reasons"] == {"realism": {"low": 4}}
    for i, au in enumerate(DISFA_AUS):
        present = sum(int(r["au_occurrence"][i] == 1) for r in accepted)
        assert result["au_occurrence"][au] == {"present": present, "absent": 12 - present, "uncertain": 0}
        hist = result["au_intensity"][au]
        for level in range(6):
            assert hist[str(level)] == sum(int(r["au_intensity"][i] == level) for r in accepted)
    assert sum(result["by"]["gender"].values()) == 12


def test_no_index_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"index\.json does not exist"):
        query(tmp_path)


def test_empty_index(tmp_path: Path) -> None:
    write_index(tmp_path, "mifa", [], target=1, surplus=[], failed={})
    assert query(tmp_path).num_rows == 0
    assert summary(tmp_path)["accepted"] == 0


def test_sql_groups_drop_reasons_by_their_stable_code(tmp_path: Path) -> None:
    """Drops of one rule with different values are one ``drop_code`` row, the card's code."""
    rng = np.random.default_rng(3)
    reasons = ["prompt read-back jaccard 0.33 < 0.5", "prompt read-back jaccard 0.25 < 0.5", "no face found"]
    with ShardWriter(tmp_path / "shards", "mifa", 0) as writer:
        for index in range(5):
            reason = reasons[index] if index < len(reasons) else None
            writer.add(make_record(0, index, rng, dropped_by="readback" if reason else None, drop_reason=reason))
        writer.commit({"attempt": 1})
    write_index(tmp_path, "mifa", [0], target=2, surplus=[], failed={})
    table = query(
        tmp_path,
        sql="SELECT drop_code(drop_reason) AS drop_code, count(*) AS n FROM samples "
        "WHERE NOT accepted GROUP BY drop_code ORDER BY drop_code",
        include_rejected=True,
    )
    assert table.to_pylist() == [
        {"drop_code": "no face found", "n": 1},
        {"drop_code": "prompt read-back jaccard # < #", "n": 2},
    ]
    assert {drop_code(r) for r in reasons} == set(table["drop_code"].to_pylist())
    # Accepted rows have no reason: NULL in, NULL out.
    assert query(tmp_path, sql="SELECT drop_code(drop_reason) AS c FROM samples")["c"].to_pylist() == [None, None]
