"""Subsets: a small dataset that refers to its source's shards (``factory filter``).

A subset folder holds ``index.parquet`` (the selected samples as index rows, in shard order,
plus ``accepted``) and ``index.json`` (written last, the commit point: the source, the
selection, the source shards it refers to and their recorded stats). No image is copied and
the source is only read. ``manifests.dataset.open_dataset`` resolves it and every reader
(``query``, ``report``, ``eval``, ``export``, ``show``, ``verify``) sees exactly its samples.

Selection, all in DuckDB over the source's ``samples`` (every sample with a stored image:
the accepted ones, and rejected ones a build kept with ``output.keep_rejected_images``):

- ``where``: any SQL condition (``au_occ(12) = 1`` shorthands work), and the presets of
  :class:`Selection` (consensus, minimum intensities, emotions, accepted only), ANDed;
- ``include_surplus``: a balanced build's surplus (accepted samples its index leaves out,
  ``manifests.balance``) is selected too, as accepted; left out otherwise, like the index;
- ``limit`` alone: a uniform sample of that many, ``balance`` + ``limit``: as equal a
  share per group of the balance columns as the groups allow (a group smaller than its
  share gives all it has, the rest is shared by the others). Both draw by
  ``md5(seed:key)``, so the same seed gives the same subset on any machine.

Memory stays bounded: the draw keeps only the keys it returns (``min_by`` with a count),
counts are aggregates, and the final sort (the selection in shard order) runs under a
DuckDB memory cap, spilling to a temp folder beyond it.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from manifests.atomic import atomic_output, write_text_atomic
from manifests.card import write_card
from manifests.claim import FolderKind, claim_folder
from manifests.dataset import DatasetRef, open_dataset
from manifests.errors import UserError
from manifests.files import copy_file, exists, make_dir, remove
from manifests.layout import RunLayout
from manifests.query import au_filter, check_where, connect, expand_au_shorthand, sql_string
from manifests.schema import INDEX_COLUMNS, MANIFEST_SCHEMA, SCHEMA_VERSION
from manifests.store import absolute, relative_path
from manifests.vocab import EMOTION_MIX_KEYS

__all__ = ["DUCKDB_MEMORY", "Selection", "SubsetError", "balanced_quotas", "make_subset", "parse_min_intensity"]

# DuckDB's cap inside the tools that must stay flat at a million rows (it spills beyond it).
DUCKDB_MEMORY = "128MB"
# Columns a subset may be balanced over: the categorical ones (no free text, no vectors).
BALANCE_COLUMNS = tuple(
    f.name
    for f in MANIFEST_SCHEMA
    if pa.types.is_string(f.type) and f.name not in ("key", "description", "drop_reason", "prompt_note")
)


class SubsetError(UserError, ValueError):
    """Bad selection options or an unusable target folder; the message names the option."""


def parse_min_intensity(text: str) -> tuple[int, int]:
    """``"AU12=3"`` / ``"12>=3"`` -> ``(12, 3)``; ``SubsetError`` naming the option otherwise."""
    match = re.fullmatch(r"\s*(?:AU)?0*(\d+)\s*(?:>=|=)\s*([0-5])\s*", text, re.IGNORECASE)
    if not match:
        raise SubsetError(f"--min-intensity {text!r}: write it as AU12=3 (an AU number, then a level 0-5)")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class Selection:
    """What a subset keeps; :meth:`conditions` is its SQL over the ``samples`` view."""

    where: str | None = None
    consensus: str | None = None  # "full", "certain", or a minimum agreement_score
    min_intensity: tuple[tuple[int, int], ...] = ()  # (AU, level): final intensity >= level
    emotions: tuple[str, ...] = ()
    accepted_only: bool = False
    balance: tuple[str, ...] = ()
    limit: int | None = None
    seed: int = 0
    include_surplus: bool = False  # a balanced build's surplus too (left out like the index does)

    def conditions(self) -> list[str]:
        found = ["image_member IS NOT NULL"]
        if not self.include_surplus:
            found.append("dropped_by IS DISTINCT FROM 'balance'")
        if self.accepted_only:
            found.append("accepted")
        found += [_consensus(self.consensus)] if self.consensus else []
        for au, level in self.min_intensity:
            au_filter(au)  # an AU MIFA does not label is an error naming the labelled ones
            found.append(f"au_int({int(au)}) >= {int(level)}")
        if self.emotions:
            unknown = sorted(set(self.emotions) - set(EMOTION_MIX_KEYS))
            if unknown:
                raise SubsetError(f"--emotion {unknown[0]!r} is not one of {', '.join(EMOTION_MIX_KEYS)}")
            found.append("emotion IN (" + ", ".join(sql_string(e) for e in self.emotions) + ")")
        if self.where:
            found.append(f"({self.where})")
        return [expand_au_shorthand(c) for c in found]

    def check(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise SubsetError(f"--limit must be >= 0, got {self.limit}")
        if self.balance and self.limit is None:
            raise SubsetError("--balance needs --limit N (how many samples the balanced subset holds)")
        bad = [c for c in self.balance if c not in BALANCE_COLUMNS]
        if bad:
            raise SubsetError(
                f"--balance {bad[0]!r} is not a column to balance over; choose from {', '.join(BALANCE_COLUMNS)}"
            )
        self.conditions()


def _consensus(value: str) -> str:
    certain = "consensus_occurrence IS NOT NULL AND NOT list_contains(consensus_occurrence, -1)"
    if value == "full":
        return f"agreement_score >= 1.0 AND {certain}"
    if value == "certain":
        return certain
    try:
        score = float(value)
    except ValueError:
        raise SubsetError(
            f"--consensus {value!r}: use 'full' (every detector agreed on every AU, none uncertain), "
            "'certain' (no uncertain AU) or a minimum agreement score such as 0.8"
        ) from None
    if not 0.0 <= score <= 1.0:
        raise SubsetError(f"--consensus {value!r}: an agreement score is between 0 and 1")
    return f"agreement_score >= {score}"


def balanced_quotas(counts: dict[tuple[Any, ...], int], limit: int) -> dict[tuple[Any, ...], int]:
    """As equal a share of ``limit`` per group as the group sizes allow (water-filling): a
    group smaller than its share gives all it has and the rest is shared by the others;
    leftover units go one each to the groups first in sorted order."""
    quotas: dict[tuple[Any, ...], int] = {}
    open_groups = sorted(counts, key=lambda g: tuple(str(v) for v in g))
    remaining = min(limit, sum(counts.values()))
    while open_groups:
        share = remaining // len(open_groups)
        small = [g for g in open_groups if counts[g] <= share]
        if not small:
            break
        for group in small:
            quotas[group] = counts[group]
            remaining -= counts[group]
        open_groups = [g for g in open_groups if g not in quotas]
    if open_groups:
        share, extra = divmod(remaining, len(open_groups))
        for i, group in enumerate(open_groups):
            quotas[group] = share + (1 if i < extra else 0)
    return quotas


def _draw(seed: int) -> str:
    return f"md5('{int(seed)}:' || key)"


def _chosen_keys(con: Any, selection: Selection, base: str) -> list[str]:
    """The drawn keys: per group (or overall) the ``quota`` smallest ``md5(seed:key)``.

    ``min_by(key, draw, n)`` keeps n keys per group while scanning, so memory grows with the
    limit (and the number of groups), never with the dataset.
    """
    draw = _draw(selection.seed)
    if not selection.balance:
        ((keys,),) = con.execute(f"SELECT min_by(key, {draw}, {int(selection.limit or 0)}) {base}").fetchall()
        return list(keys or [])
    columns = ", ".join(selection.balance)
    counts = {tuple(r[:-1]): r[-1] for r in con.execute(f"SELECT {columns}, count(*) {base} GROUP BY ALL").fetchall()}
    quotas = balanced_quotas(counts, int(selection.limit or 0))
    largest = max(quotas.values(), default=0)
    if largest == 0:
        return []
    rows = con.execute(f"SELECT {columns}, min_by(key, {draw}, {largest}) {base} GROUP BY ALL").fetchall()
    return [key for *group, keys in rows for key in keys[: quotas.get(tuple(group), 0)]]


def _selected_sql(con: Any, selection: Selection) -> str:
    """SQL of the selected ``samples`` rows (before ordering)."""
    base = "FROM samples WHERE " + " AND ".join(selection.conditions())
    if selection.limit is None:
        return f"SELECT * {base}"
    con.register("chosen_keys", pa.table({"key": pa.array(_chosen_keys(con, selection, base), pa.string())}))
    return f"SELECT * {base} AND key IN (SELECT key FROM chosen_keys)"


def _is_subset(folder: Path) -> bool:
    try:
        return open_dataset(folder).subset is not None
    except (OSError, ValueError):
        return False


SUBSET_FOLDER = FolderKind(
    noun="subset target",
    what="a subset",
    marker=RunLayout(Path(), "").index_json.name,
    fix="choose an empty or new folder",
    error=SubsetError,
    is_ours=_is_subset,
)


def _prepare_target(dest: Path, source: DatasetRef, overwrite: bool) -> None:
    if str(absolute(dest)) == str(absolute(source.root)):
        raise SubsetError(
            f"the subset folder {dest} is the source itself; choose another folder (the source is never modified)"
        )
    if claim_folder(dest, SUBSET_FOLDER) == "ours":
        if not overwrite:
            raise SubsetError(f"{dest} already holds a subset; pass --overwrite to replace it")
        layout = RunLayout(dest, open_dataset(dest).name)
        for path in (layout.index_json, layout.index_parquet, layout.card, layout.provenance):
            remove(path)
    make_dir(dest)


def make_subset(source: Path, dest: Path, selection: Selection, *, overwrite: bool = False) -> dict[str, Any]:
    """Select from the dataset in ``source`` and commit the subset in ``dest``; returns its index.json."""
    selection.check()
    if selection.where:
        check_where(selection.where)  # read-only, before the target is touched
    dataset = open_dataset(source)
    dest = Path(dest)
    surplus = selection.include_surplus
    con = connect(source, include_rejected=True, include_surplus=surplus)
    try:  # the selection binds (a bad column, a file outside the dataset) before the target is touched
        con.execute("SELECT key FROM samples WHERE " + " AND ".join(selection.conditions()) + " LIMIT 0")
    finally:
        con.close()
    _prepare_target(dest, dataset, overwrite)
    layout = RunLayout(dest, dataset.name)
    with tempfile.TemporaryDirectory(prefix=".subset-spill-", dir=dest) as spill:
        con = connect(
            source,
            include_rejected=True,
            include_surplus=surplus,
            memory_limit=DUCKDB_MEMORY,
            spill_dir=Path(spill),
            writable=(dest,),
        )
        try:
            chosen = _selected_sql(con, selection)
            # The index schema's columns (tar after image_member), then accepted.
            tar = f"printf('%s-%06d.tar', {sql_string(dataset.name)}, shard) AS tar"
            columns = ", ".join([*INDEX_COLUMNS[:3], tar, *INDEX_COLUMNS[3:], "accepted"])
            with atomic_output(layout.index_parquet) as tmp:
                con.execute(
                    f"COPY (SELECT {columns} FROM ({chosen}) ORDER BY shard, index) TO {sql_string(str(tmp))} "
                    "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 8192)"
                )
            stats = con.execute(
                f"SELECT count(*), count(*) FILTER (WHERE accepted), list(DISTINCT shard ORDER BY shard) "
                f"FROM read_parquet({sql_string(str(layout.index_parquet))})"
            ).fetchone()
        finally:
            con.close()
    samples, accepted, shards = stats[0], stats[1], list(stats[2] or [])
    index = _subset_index(dataset, dest, selection, samples, accepted, shards)
    if exists(dataset.layout.provenance):
        copy_file(dataset.layout.provenance, layout.provenance)
    write_text_atomic(layout.index_json, json.dumps(index, indent=1))
    write_card(dest)  # with every index, a subset's too (the source's licences travel in provenance.json)
    return index


def _subset_index(
    dataset: DatasetRef, dest: Path, selection: Selection, samples: int, accepted: int, shards: list[int]
) -> dict[str, Any]:
    root = absolute(dataset.source_root)
    recorded = dataset.index.get("shard_stats", {})
    return {
        "dataset": dataset.name,
        "schema_version": SCHEMA_VERSION,
        "subset": {
            "source": str(root),
            "source_shards_dir": str(absolute(dataset.shards_dir)),
            "parent": str(absolute(dataset.root)),
            "selection": asdict(selection),
            "conditions": selection.conditions(),
            "source_created_at": dataset.index.get("created_at"),
        },
        "target": samples,
        "samples": samples,
        "accepted": accepted,
        "planned": samples,
        "shards": shards,
        "shards_dir": relative_path(absolute(dataset.shards_dir), absolute(dest)),
        "shard_stats": {str(s): recorded.get(str(s), {}) for s in shards},
        "surplus_shards": [],
        "failed_shards": {},
        "index_parquet": RunLayout(dest, dataset.name).index_parquet.name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
