"""``factory filter RUN SUBSET``: a subset from presets, SQL and a balanced, seeded sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from manifests.query import user_sql
from manifests.subset import Selection, SubsetError, make_subset, parse_min_intensity

__all__ = ["SubsetError", "run_filter"]


def run_filter(
    source: Path,
    dest: Path,
    *,
    where: str | None = None,
    consensus: str | None = None,
    min_intensity: list[str] | None = None,
    emotions: list[str] | None = None,
    accepted_only: bool = False,
    balance: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    include_surplus: bool = False,
) -> dict[str, Any]:
    """Parse the CLI's presets into a :class:`Selection` and commit the subset; returns its index.json."""
    selection = Selection(
        where=where,
        consensus=consensus,
        min_intensity=tuple(parse_min_intensity(t) for t in min_intensity or ()),
        emotions=tuple(emotions or ()),
        accepted_only=accepted_only,
        balance=tuple(c.strip() for c in balance.split(",") if c.strip()) if balance else (),
        limit=limit,
        seed=seed,
        include_surplus=include_surplus,
    )
    with user_sql():  # the selection's SQL holds the user's --where
        return make_subset(source, dest, selection, overwrite=overwrite)
