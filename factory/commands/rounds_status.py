"""`factory status` on a closed-loop build: per planning round, its shards, the emotion mix it
planned (from the plan files) and the mix it delivered (its kept samples: accepted, surplus left
out), with its planned, accepted and kept counts. Rounds follow ``[balance] round_shards``
(``factory.engine.rounds``); an open-loop build, or one without rounds, has none."""

from __future__ import annotations

from collections import Counter
from typing import Any

from factory.engine.rundir import RunDir
from manifests.balance import read_surplus
from manifests.store import open_parquet, read_table

__all__ = ["round_summary"]


def round_summary(run: RunDir, info: dict[str, Any], done: list[int]) -> list[dict[str, Any]]:
    """One entry per round with a done shard, in order (empty without closed-loop rounds)."""
    balance = info["recipe"].get("balance", {})
    size = int(balance.get("round_shards", 0) or 0)
    if not balance.get("enabled") or not size:
        return []
    rounds: dict[int, dict[str, Any]] = {}
    for shard in sorted(done):
        entry = rounds.setdefault(
            shard // size,
            {"round": shard // size, "shards": [], "planned": 0, "accepted": 0, "kept": 0},
        )
        entry.setdefault("planned_mix", Counter())
        entry.setdefault("kept_mix", Counter())
        paths = run.shard_paths(shard)
        with open_parquet(paths.parquet) as manifest:
            table = manifest.read(columns=["key", "emotion", "accepted"], use_threads=False)
        plan = read_table(run.plan_path(shard)) if run.plan_path(shard).exists() else table
        surplus = read_surplus(paths)
        rows = zip(table["key"].to_pylist(), table["emotion"].to_pylist(), table["accepted"].to_pylist(), strict=True)
        kept = [emotion for key, emotion, accepted in rows if accepted and key not in surplus]
        entry["shards"].append(shard)
        entry["planned"] += table.num_rows
        entry["accepted"] += sum(bool(a) for a in table["accepted"].to_pylist())
        entry["kept"] += len(kept)
        entry["planned_mix"].update(plan["emotion"].to_pylist())
        entry["kept_mix"].update(kept)
    return [{**e, "planned_mix": dict(e["planned_mix"]), "kept_mix": dict(e["kept_mix"])} for e in rounds.values()]
