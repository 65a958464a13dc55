"""Waste benchmark of delivered balance: generated samples per delivered one, three ways.

A BENCHMARK STAND-IN, not a generator: the build is simulated in one process, shard by shard
in shard order (what the committed prefix sees; Ray, images and checks left out), with the real
planner (``factory.plan``), the real balance policy and closed-loop rounds
(``factory.engine.balance``, ``factory.engine.rounds``) and the real selection
(``manifests.balance``); only acceptance is drawn from the yield model below. Delivered labels
are the planned ones (as the stand-in generator's).

Yield model (documented skew): a sample is accepted with probability ``p``, the least of
``AU_YIELD[au] x LEVEL_YIELD[level]`` over its active AUs (0.9 for a sample with none), drawn
from a seeded stream per shard; per-AU acceptance runs from 0.1 (AU9, AU20) to 1.0 (AU12, AU25)
and per-intensity from 1.0 (A) to 0.5 (E). One cell is infeasible: AU20 at intensity 5 is never
accepted.

Three rows: (a) open loop + balanced selection (every shard planned open loop; the index keeps
the samples that keep every share within tolerance, the best a ``filter --balance`` afterwards
could do in shard order), (b) the closed loop (``[balance]`` on, rounds), (c) the floor: for
the samples (b) delivered, the mean of ``1 / p`` (what planning exactly that mix would cost).

``python -m bench.bench_balance [TARGET]`` (default :data:`TARGET`); ``make bench`` runs it.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from factory.engine.balance import balance_policy
from factory.engine.policy import CommittedPrefix
from factory.plan import Planner
from factory.recipe import Recipe, recipe_from_dict
from manifests.balance import read_surplus
from manifests.balance_report import balance_report, delivered_cells
from manifests.layout import RunLayout
from manifests.schema import MANIFEST_SCHEMA, N_AUS
from manifests.vocab import DISFA_AUS

TARGET = 20_000  # kept samples; the 100,000 is `python -m bench.bench_balance 100000`
AU_YIELD = {1: 0.6, 2: 0.5, 4: 0.7, 5: 0.3, 6: 0.8, 9: 0.1, 12: 1.0, 15: 0.4, 17: 0.6, 20: 0.1, 25: 1.0, 26: 0.8}
LEVEL_YIELD = (1.0, 1.0, 0.9, 0.8, 0.65, 0.5)  # by level 0..5 (0 unused)
INFEASIBLE = (20, 5)  # AU20 at intensity E: never accepted
NAME = "bench"


def acceptance(vectors: np.ndarray) -> np.ndarray:
    """The yield model: each sample's probability of acceptance (see module docstring)."""
    p = np.full(len(vectors), 0.9)
    some = (vectors > 0).any(axis=1)
    p[some] = 1.0
    for i, au in enumerate(DISFA_AUS):
        levels = vectors[:, i].astype(np.int64)
        active = levels > 0
        cell = AU_YIELD[au] * np.asarray(LEVEL_YIELD)[levels]
        if au == INFEASIBLE[0]:
            cell = np.where(levels == INFEASIBLE[1], 0.0, cell)
        p = np.where(active, np.minimum(p, cell), p)
    return p


def bench_recipe(out: Path, target: int, *, closed: bool, shard_size: int = 500) -> Recipe:
    balance = {
        "enabled": True,
        "round_shards": 16 if closed else 0,  # the recipe's default layout
        "round_lag_shards": 8,
        "max_generated_per_accepted": 12.0,
    }
    return recipe_from_dict(
        {
            "dataset": {"name": NAME, "target": target, "shard_size": shard_size, "seed": 11, "out": str(out)},
            "identities": {"bank": "none"},
            "balance": balance,
        }
    )


def _manifest(plan: pa.Table, accepted: np.ndarray) -> pa.Table:
    columns = ["key", "identity_id", "emotion", "ethnicity", "age_band", "gender", "planned_intensity"]
    table = plan.select(columns).append_column(MANIFEST_SCHEMA.field("accepted"), pa.array(accepted))
    return table.append_column(MANIFEST_SCHEMA.field("au_intensity"), plan["planned_intensity"])


def simulate(recipe: Recipe, max_shards: int = 100_000) -> dict[str, Any]:
    """Run the build's planning and selection in shard order until the target is kept."""
    layout = RunLayout(recipe.dataset.out, NAME)
    layout.shards.mkdir(parents=True, exist_ok=True)
    planner = Planner(recipe)
    policy = balance_policy(recipe, layout.root, None, planner)
    assert policy is not None
    kept, generated, cost, shard = 0, 0, 0.0, 0
    while kept < recipe.dataset.target and shard < max_shards:
        plan = policy.shard(shard)
        vectors = plan["planned_intensity"].combine_chunks().flatten().to_numpy().reshape(-1, N_AUS)
        p = acceptance(vectors)
        accepted = np.random.default_rng([recipe.dataset.seed, shard, 99]).random(len(p)) < p
        pq.write_table(_manifest(plan, accepted), layout.shard_paths(shard).parquet)
        decision = policy.review(CommittedPrefix(tuple(range(shard + 1)), {}, recipe.dataset.target, shard + 1))
        kept += decision.counted[shard]
        generated += plan.num_rows
        surplus = read_surplus(layout.shard_paths(shard))
        keys = plan["key"].to_pylist()
        cost += float(sum(1.0 / p[i] for i in range(len(keys)) if accepted[i] and keys[i] not in surplus))
        shard += 1
        if decision.finish_at is not None:  # twice the waste bound: the dataset ends short here
            break
    return {"generated": generated, "kept": kept, "shards": shard, "floor": cost / max(kept, 1), "policy": policy}


def delivered_met(layout: RunLayout, shards: int, policy: Any) -> tuple[int, int]:
    """(targets met, targets with a share) over the kept samples of the first ``shards``."""
    counts: Counter[str] = Counter()
    n = 0
    for shard in range(shards):
        paths = layout.shard_paths(shard)
        table = pq.read_table(paths.parquet)
        surplus = read_surplus(paths)
        keys, accepted = table["key"].to_pylist(), table["accepted"].to_pylist()
        keep = [a and k not in surplus for k, a in zip(keys, accepted, strict=True)]
        table = table.filter(pa.array(keep))
        counts.update(delivered_cells(table, policy.targets.units))
        n += table.num_rows
    rows = [r for r in balance_report(counts, n, policy.targets) if not r.infeasible]
    return sum(r.met for r in rows), len(rows)


def main() -> str:
    target = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else TARGET
    rows = []
    floor = None
    for closed in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            recipe = bench_recipe(Path(tmp), target, closed=closed)
            run = simulate(recipe)
            met, cells = delivered_met(RunLayout(tmp, NAME), run["shards"], run["policy"])
            seconds = time.perf_counter() - t0
        ratio = run["generated"] / run["kept"]
        name = "closed loop ([balance] on, rounds of 16 shards, lag 8)" if closed else "open loop + balanced selection"
        rows.append(
            f"| {name} | {run['generated']:,} | {run['kept']:,} | {ratio:.2f} | {met}/{cells} | {seconds:.0f} |"
        )
        floor = run["floor"]
    rows.append(f"| floor (1 / yield of the closed loop's delivered mix) | | | {floor:.2f} | | |")
    return "\n".join(
        [
            f"### Delivered-balance waste (`python -m bench.bench_balance {target}`)",
            "",
            "| plan | generated | delivered | generated per delivered | shares met | s |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "Simulated in one process (bench/bench_balance.py: the real planner, rounds and selection; acceptance",
            "from its documented skewed yield model, AU20 at intensity 5 infeasible), shard size 500.",
            "Shares met: targets within their tolerance on the delivered samples, infeasible cells left out.",
        ]
    )


if __name__ == "__main__":
    print(main())
