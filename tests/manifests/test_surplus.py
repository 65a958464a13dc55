"""A balanced build's surplus (``manifests.balance``): left out of ``samples`` and of a subset as
the index leaves it out, and brought back by ``factory filter --include-surplus``; nothing is
deleted. A synthetic dataset (no Ray) with a balance file beside its first shard."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from factory.cli import app
from manifests.balance import BALANCE_SCHEMA, DROPPED_BY, balance_path
from manifests.layout import RunLayout
from manifests.query import query
from tests.manifests.synthetic import synthetic_dataset


def _balanced(tmp_path: Path) -> tuple[Path, list[str]]:
    """8 accepted samples in shard 0, 3 of them held back as surplus by the balance selection."""
    run = synthetic_dataset(tmp_path / "run", {"a": 8}, per_shard=8)
    paths = RunLayout(run, "mifa").shard_paths(0)
    keys = pq.read_table(paths.parquet)["key"].to_pylist()
    held = keys[5:]
    rows = {
        "key": keys,
        "dropped_by": [DROPPED_BY if k in held else None for k in keys],
        "reason": ["cell AU12+ full (2 of 5)" if k in held else None for k in keys],
    }
    pq.write_table(pa.table(rows, schema=BALANCE_SCHEMA), balance_path(paths))
    return run, held


def test_samples_leave_the_surplus_out_with_its_reason(tmp_path: Path) -> None:
    run, held = _balanced(tmp_path)
    accepted = query(run, "SELECT key FROM samples")["key"].to_pylist()
    assert len(accepted) == 5 and not set(held) & set(accepted)
    rows = query(run, "SELECT key, dropped_by, drop_reason FROM samples WHERE NOT accepted", include_rejected=True)
    assert sorted(rows["key"].to_pylist()) == sorted(held)
    assert set(rows["dropped_by"].to_pylist()) == {"balance"}
    assert rows["drop_reason"].to_pylist()[0] == "cell AU12+ full (2 of 5)"


def test_filter_include_surplus_brings_it_back(tmp_path: Path) -> None:
    run, held = _balanced(tmp_path)
    runner = CliRunner()
    plain = runner.invoke(app, ["filter", str(run), str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    assert not set(held) & set(pq.read_table(tmp_path / "plain" / "index.parquet")["key"].to_pylist())
    back = runner.invoke(app, ["filter", str(run), str(tmp_path / "all"), "--include-surplus", "--accepted-only"])
    assert back.exit_code == 0, back.output
    subset = tmp_path / "all"
    assert set(held) <= set(pq.read_table(subset / "index.parquet")["key"].to_pylist())
    assert len(query(subset, "SELECT key FROM samples WHERE accepted")) == 8  # accepted in the subset, as built
    assert len(query(run, "SELECT key FROM samples")) == 5  # the source is unchanged
