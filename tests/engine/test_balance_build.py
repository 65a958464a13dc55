"""A balanced build on Ray (stand-in generator): the same shards, balance decisions and index on
one logical GPU as on two, and the index holds exactly the kept samples; at twice its waste
bound it ends short of the target and says so (the closed-loop build test reaches its target)."""

from __future__ import annotations

import html
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factory.commands.report import render_report
from factory.commands.status import run_status
from factory.engine.build import build
from factory.recipe import recipe_from_dict
from manifests.balance import read_balance, read_surplus
from manifests.layout import RunLayout
from tests.engine.conftest import standin_doc

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _balanced(out: Path, gpus: int):
    # the default tolerances on 30 samples of the stand-in's plans: not all reachable,
    # and the least waste bound (1 generated per target sample): the build ends after 60 generated
    balance = {"enabled": True, "max_generated_per_accepted": 1.0}
    return recipe_from_dict(standin_doc(out, dataset={"target": 30}, engine={"gpus": gpus}, balance=balance))


def test_balanced_build_is_the_same_on_one_and_two_gpus_and_ends_short_at_twice_its_waste_bound(
    ray_cluster, tmp_path: Path
) -> None:
    summaries = {gpus: build(_balanced(tmp_path / str(gpus), gpus), quiet=True) for gpus in (1, 2)}
    one, two = (RunLayout(tmp_path / str(g), "t") for g in (1, 2))
    assert summaries[1].indexed_shards == summaries[2].indexed_shards == list(range(10))  # 60 generated
    index = pq.read_table(one.index_parquet)
    assert index.equals(pq.read_table(two.index_parquet))
    kept = index.num_rows
    assert summaries[1].accepted == kept < 30  # the index holds exactly the kept samples, no open-loop fill
    short = summaries[1].short
    assert short is not None and short.startswith(f"{30 - kept} of 30 slots unfilled: 60 samples generated")
    assert summaries[1].complete and summaries[2].short == short
    surplus = 0
    for shard in summaries[1].indexed_shards:
        a, b = one.shard_paths(shard), two.shard_paths(shard)
        assert a.tar.read_bytes() == b.tar.read_bytes()
        decided = read_balance(a)
        assert decided is not None and decided[0].equals(read_balance(b)[0])
        held = read_surplus(a)
        surplus += len(held)
        assert not held & set(index["key"].to_pylist())  # the surplus is not indexed ...
        assert held <= set(pq.read_table(a.parquet)["key"].to_pylist())  # ... and stays in its shard
    assert surplus > 0
    assert summaries[1].selected_from == kept + surplus == 60  # the stand-in drops none: all 60 accepted
    card = (tmp_path / "1" / "DATASET_CARD.md").read_text()
    assert "### Delivered balance ([balance] on)" in card and f"| held back by balance (surplus) | {surplus} |" in card
    assert f"Ended short of the target: {short}." in card
    assert f"Ended short of the target: {html.escape(short)}." in render_report(tmp_path / "1", per_emotion=1)
    status = run_status(tmp_path / "1")
    assert status["complete"] and status["index"]["short"] == short
    balance = status["balance"]
    assert balance["samples"] == kept and {c["cell"] for c in balance["cells"]} >= {"AU12+", "emotion=fear"}
    # the cells given up at the waste bound, each with why: planned, accepted (the stand-in drops none)
    causes = balance["causes"]
    assert set(causes) == set(balance["infeasible"]) and causes
    assert any(c.startswith("given up during the build: ") and "100% accepted" in c for c in causes.values())
    assert all(f"- {cell}: {cause}" in card for cell, cause in causes.items())
