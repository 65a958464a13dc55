"""The dataset card (``DATASET_CARD.md``), written with every index.

Its first line is the licence verdict: a dataset whose images or labels were shaped by a
model under non-commercial terms says so there, naming the stages; an undeclared licence is
named there too. Then: what made it (recipe, seed, fingerprint, software versions, every
stage with its licence and the sha256 of its model files), counts, the acceptance funnel
(drops by stage and reason, from the shard stats; a balanced build's surplus), and balance
statistics (emotions, demographics and AU occurrence against the recipe's targets, from
``index.parquet``; a balanced build's delivered shares against its tolerances and its
infeasible cells, ``manifests.balance``).

The card reads ``index.json``, the shard stats, ``index.parquet`` (DuckDB aggregates: flat
memory at any size) and ``provenance.json`` (written before the index by the build's index
writer; copied into subsets and exports). Without ``provenance.json`` the licence is stated
as unknown, never guessed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import duckdb

from manifests.atomic import write_text_atomic
from manifests.balance import read_targets
from manifests.balance_report import balance_report, causes_from, delivered_cells, shard_manifests
from manifests.bank import IdentityBankError, open_bank
from manifests.dataset import DatasetRef, open_dataset
from manifests.layout import shard_paths
from manifests.query import connect, drop_code, sql_string  # drop_code: re-exported for the card's callers
from manifests.store import location, open_parquet, register_duckdb
from manifests.vocab import DISFA_AUS
from manifests.writer import read_stats

__all__ = [
    "acceptance_funnel",
    "drop_code",
    "is_non_commercial",
    "licence_verdict",
    "read_provenance",
    "render_card",
    "write_card",
]

_NON_COMMERCIAL = re.compile(r"non[- ]?commercial|research (?:use )?only|\bCC[- ]BY[- ]NC\b|NonCommercial", re.I)


def is_non_commercial(licence: str) -> bool:
    return bool(_NON_COMMERCIAL.search(licence))


def read_provenance(root: Path) -> dict[str, Any] | None:
    path = location(root) / "provenance.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def licence_verdict(provenance: dict[str, Any] | None) -> str:
    """The card's first line."""
    if provenance is None:
        return (
            "**Licence: UNKNOWN.** No provenance.json records the stages that made this dataset, so the "
            "licences of the models that shaped its images and labels are not known; do not assume any use is allowed."
        )
    stages = provenance.get("stages", [])
    restricted = [s for s in stages if is_non_commercial(str(s.get("licence", "")))]
    undeclared = [s for s in stages if "UNDECLARED" in str(s.get("licence", ""))]
    if restricted:
        names = ", ".join(f"{s['name']} ({s['path']})" for s in restricted)
        line = (
            f"**Licence: NON-COMMERCIAL USE ONLY.** Models under non-commercial terms shaped these images or "
            f"labels: {names}. See the licences below."
        )
    else:
        line = (
            "**Licence: no stage declares non-commercial terms**; every stage's licence is listed below "
            "(check them for your use; this is not legal advice)."
        )
    if undeclared:
        line += " UNDECLARED licence for: " + ", ".join(f"{s['name']} ({s['path']})" for s in undeclared) + "."
    return line


def _shares(weights: dict[str, Any] | None) -> dict[str, float]:
    if not weights:
        return {}
    total = float(sum(weights.values())) or 1.0
    return {k: float(v) / total for k, v in weights.items()}


def _balance(dataset: DatasetRef) -> dict[str, Any]:
    """Counts per emotion / demographic group and AU occurrence shares, from index.parquet."""
    source = f"read_parquet({sql_string(str(dataset.layout.index_parquet))})"
    con = duckdb.connect()
    register_duckdb(con, dataset.root, dataset.shards_dir)
    try:
        con.execute("SET memory_limit = '256MB'")
        by = {
            column: dict(con.execute(f"SELECT {column}, count(*) FROM {source} GROUP BY ALL ORDER BY ALL").fetchall())
            for column in ("emotion", "ethnicity", "age_band", "gender", "label_source")
        }
        occurrence = con.execute(
            "SELECT "
            + ", ".join(
                f"avg(CASE WHEN au_occurrence[{i + 1}] = 1 THEN 1.0 ELSE 0.0 END)" for i in range(len(DISFA_AUS))
            )
            + f", count(*) FROM {source}"
        ).fetchone()
        identities = dict(con.execute(f"SELECT identity_id, count(*) FROM {source} GROUP BY ALL").fetchall())
    finally:
        con.close()
    au_share = dict(zip(DISFA_AUS, occurrence[:-1], strict=True))
    return {"by": by, "au_share": au_share, "rows": occurrence[-1], "identities": identities}


def acceptance_funnel(dataset: DatasetRef) -> tuple[int, int, dict[str, dict[str, int]]]:
    """(planned, accepted, stage -> reason code (:func:`drop_code`) -> dropped) over the indexed
    shards' stats."""
    planned = accepted = 0
    drops: dict[str, dict[str, int]] = {}
    for shard in dataset.shards:
        try:
            stats = read_stats(dataset.shards_dir, dataset.name, shard)
        except (OSError, ValueError):
            continue
        planned += int(stats.get("planned", 0))
        accepted += int(stats.get("accepted", 0))
        for stage, reasons in stats.get("drop_reasons", {}).items():
            for reason, n in reasons.items():
                code = drop_code(reason)
                drops.setdefault(stage, {}).setdefault(code, 0)
                drops[stage][code] += int(n)
    return planned, accepted, drops


def _listed(values: Any) -> str:
    """A list as the card prints it: comma-separated values, or "none"."""
    items = list(values or [])
    return ", ".join(str(v) for v in items) if items else "none"


def _identities(dataset: DatasetRef, provenance: dict[str, Any] | None, used: dict[str, int]) -> list[str]:
    """How many identities the samples show, and the licences of the bank photos they come from
    (read from the bank the recipe names; said so when it cannot be read here)."""
    lines = ["### Identities", "", f"{len(used)} identities in {sum(used.values())} samples."]
    spec = str(((provenance or {}).get("recipe") or {}).get("identities", {}).get("bank", "none"))
    if spec == "none":
        return lines + ["No identity bank: identities come from text-to-image prompts (no photos)."]
    try:
        bank = open_bank(spec)
    except (IdentityBankError, OSError) as exc:
        return lines + [f"The bank photos' licences could not be read from `{spec}` here ({exc})."]
    licences: dict[str, int] = {}
    for record in bank.records() if bank is not None else []:
        if record.identity_id in used:
            licences[record.licence] = licences.get(record.licence, 0) + 1
    rows = [[licence, n] for licence, n in sorted(licences.items())]
    return lines + ["", f"Bank photos (`{spec}`) by licence:", ""] + _table(["licence", "identities"], rows)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]


def _made_by(provenance: dict[str, Any] | None) -> list[str]:
    if provenance is None:
        return ["## What made it", "", "Not recorded (no provenance.json)."]
    lines = [
        "## What made it",
        "",
        f"- seed {provenance.get('seed')}, recipe fingerprint `{provenance.get('fingerprint')}`, "
        f"identity bank `{provenance.get('identity_bank')}`",
        f"- build started {provenance.get('started_at')}; provenance written {provenance.get('written_at')}",
        "",
        "### Stages, licences and model files",
        "",
    ]
    rows = []
    for stage in provenance.get("stages", []):
        models = "; ".join(
            f"{name}: `{m.get('path')}` sha256 `{m.get('sha256')}`" for name, m in stage.get("models", {}).items()
        )
        rows.append([stage.get("path"), stage.get("name"), stage.get("licence"), models or "none named"])
    lines += _table(["recipe path", "stage", "licence", "model files (sha256)"], rows)
    versions = {**provenance.get("versions", {}), **provenance.get("packages", {})}
    lines += ["", "### Software", ""] + _table(["package", "version"], [[k, v] for k, v in sorted(versions.items())])
    lines += ["", "### Recipe", "", "```json", json.dumps(provenance.get("recipe", {}), indent=1), "```"]
    return lines


def _counts(dataset: DatasetRef) -> list[str]:
    planned, accepted, drops = acceptance_funnel(dataset)
    index = dataset.index
    lines = ["## Counts", ""]
    if dataset.subset is not None:
        lines.append(
            f"A subset of {dataset.subset['source']}: {dataset.samples()} samples selected "
            f"({index.get('accepted')} accepted) where {' AND '.join(dataset.subset.get('conditions', []))}."
        )
    lines.append(
        f"{index.get('accepted')} accepted samples (target {index.get('target')}) in {len(dataset.shards)} shards; "
        f"surplus shards: {_listed(index.get('surplus_shards'))}; failed shards: "
        f"{_listed(sorted(index.get('failed_shards', {})))}."
    )
    lines += ["", "### Acceptance funnel (indexed shards)", ""]
    rate = f"{accepted / planned:.3f}" if planned else "n/a"
    rows = [["generated", planned, ""]]
    for stage, reasons in drops.items():
        ranked = sorted(reasons.items(), key=lambda kv: -kv[1])
        listed = ", ".join(f"{reason} ({n})" for reason, n in ranked[:5])
        listed += f", and {len(ranked) - 5} more reasons" if len(ranked) > 5 else ""
        rows.append([f"dropped by {stage}", sum(reasons.values()), listed])
    rows.append(["accepted", accepted, f"acceptance rate {rate}"])
    surplus = int(index.get("balance_surplus", 0) or 0)
    if surplus:  # [balance]: accepted, kept on disk, left out of the index (manifests.balance)
        rows.append(["held back by balance (surplus)", surplus, "a cell was full; `dropped_by = balance`"])
        rows.append(["indexed", accepted - surplus - int(index.get("near_duplicates", 0) or 0), ""])
    return lines + _table(["step", "samples", "reasons"], rows)


def _delivered_section(dataset: DatasetRef) -> list[str]:
    """A balanced build's delivered shares against its targets (``manifests.balance``); nothing
    for an open-loop build."""
    if not dataset.shards or dataset.subset is not None:
        return []
    targets = read_targets(shard_paths(dataset.shards_dir, dataset.name, dataset.shards[-1]))
    if targets is None:
        return []
    with open_parquet(dataset.layout.index_parquet) as index:
        rows = index.read(columns=["au_intensity", "emotion", "ethnicity", "age_band", "gender"])
    report = balance_report(delivered_cells(rows, targets.units), rows.num_rows, targets)
    missed = [r.cell for r in report if not r.met and not r.infeasible]
    lines = ["### Delivered balance ([balance] on)", ""]
    lines.append(
        "Every target met within its tolerance."
        if not missed
        else f"{len(missed)} target(s) missed: {', '.join(missed)}."
    )
    if dataset.index.get("short"):  # the closed loop's waste bound ended it short of the target
        lines.append(f"Ended short of the target: {dataset.index['short']}.")
    if targets.infeasible:
        lines.append(
            "Infeasible (no identity of the bank, too rarely accepted after repeated tries, or still short at "
            "the waste bound; a cell given up during the build keeps the share its kept samples hold, the rest "
            f"of its share went to the other cells of its kind): {', '.join(sorted(targets.infeasible))}."
        )
        causes = causes_from(shard_manifests(dataset.shards_dir, dataset.name, dataset.shards), targets)
        lines += ["", *(f"- {cell}: {cause}" for cell, cause in causes.items()), ""]
    if targets.limits:
        limited = ", ".join(f"{cell} at most {share:.3f}" for cell, share in sorted(targets.limits.items()))
        lines.append(
            "Limited by the bank (every identity of the group shows its own AUs in every sample, so the AU "
            f"targets leave it no more; the rest of its share went to the other groups of its kind): {limited}."
        )
    table = [
        [
            r.cell,
            r.samples,
            f"{r.share:.3f}",
            f"{r.target:.3f}",
            f"±{r.tolerance:.3f}",
            "infeasible" if r.infeasible else ("met" if r.met else "missed"),
        ]
        for r in report
    ]
    return lines + [""] + _table(["cell", "samples", "delivered", "target", "tolerance", ""], table) + [""]


def _balance_section(dataset: DatasetRef, provenance: dict[str, Any] | None, balance: dict[str, Any]) -> list[str]:
    recipe = (provenance or {}).get("recipe", {})
    targets = {
        "emotion": _shares(recipe.get("emotions", {}).get("mix")),
        **{k: _shares(v) for k, v in recipe.get("demographics", {}).items()},
    }
    total = balance["rows"] or 1
    lines = ["## Balance", "", *_delivered_section(dataset)]
    for column, counts in balance["by"].items():
        target = targets.get(column) or {}
        counts = {**counts, **{k: 0 for k in target if k not in counts}}  # a recipe value no sample has
        rows = [[k, n, f"{n / total:.3f}", f"{target.get(k, 0.0):.3f}" if target else ""] for k, n in counts.items()]
        lines += [f"### {column}", ""] + _table([column, "samples", "share", "recipe share"], rows) + [""]
    aus = recipe.get("aus", {})
    units = aus.get("units", list(DISFA_AUS))
    rows = []
    for au, share in balance["au_share"].items():
        target = aus.get("share_overrides", {}).get(f"AU{au}", aus.get("active_share")) if au in units else None
        shown = "n/a" if share is None else f"{share:.3f}"  # no rows: no share
        rows.append([f"AU{au}", shown, "off" if au not in units else (f"{target:.3f}" if target else "")])
    lines += ["### AU occurrence", ""] + _table(["AU", "share present", "recipe share"], rows)
    return lines + [""] + _identities(dataset, provenance, balance["identities"])


def _fidelity_sql() -> str:
    """Per AU (1-based ``i``): TP, FP, FN of the consensus occurrence (present when >= 0.5, -1 =
    uncertain left out) and the MAE of its intensity, against labels that are not uncertain."""
    parts = []
    for i in range(1, len(DISFA_AUS) + 1):
        label, vote = f"au_occurrence[{i}]", f"consensus_occurrence[{i}]"
        level, guess = f"au_intensity[{i}]", f"consensus_intensity[{i}]"
        parts += [
            f"count(*) FILTER (WHERE {label} = 1 AND {vote} >= 0.5)",
            f"count(*) FILTER (WHERE {label} = 0 AND {vote} >= 0.5)",
            f"count(*) FILTER (WHERE {label} = 1 AND {vote} >= 0 AND {vote} < 0.5)",
            f"avg(abs({level} - {guess})) FILTER (WHERE {level} >= 0 AND {guess} >= 0 AND NOT isnan({guess}))",
        ]
    return "SELECT count(*), " + ", ".join(parts) + " FROM samples WHERE label_source = 'exact'"


def _exact_fidelity(dataset: DatasetRef, balance: dict[str, Any]) -> list[str]:
    """When samples carry exact labels: the detector consensus scored against them as `factory
    eval` scores it (per-AU F1 and intensity MAE, their means over the AUs that have one)."""
    if not balance["by"]["label_source"].get("exact"):
        return []  # read from index.parquet: no manifest is scanned for a dataset without exact labels
    con = connect(dataset.root)
    try:
        row = con.execute(_fidelity_sql()).fetchone()
    finally:
        con.close()
    rows, f1s, maes = [], [], []
    for k, au in enumerate(DISFA_AUS):
        tp, fp, fn, mae = row[1 + 4 * k : 5 + 4 * k]
        f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None
        f1s += [f1] if f1 is not None else []
        maes += [mae] if mae is not None else []
        rows.append([f"AU{au}", "n/a" if f1 is None else f"{f1:.3f}", "n/a" if mae is None else f"{mae:.3f}"])
    mean_f1 = f"{sum(f1s) / len(f1s):.3f}" if f1s else "n/a"
    mean_mae = f"{sum(maes) / len(maes):.3f}" if maes else "n/a"
    lines = ["## Label fidelity (exact labels)", ""]
    lines.append(
        f"{row[0]} samples carry exact labels (`label_source = exact`). The detector consensus against them: "
        f"mean F1 {mean_f1} (occurrence), mean MAE {mean_mae} (intensity, 0-5). `factory eval` scores each detector."
    )
    return lines + [""] + _table(["AU", "consensus F1", "consensus MAE"], rows)


def render_card(root: Path, note: str | None = None) -> str:
    """The card of the committed dataset in ``root`` (``note`` goes right after the licence line)."""
    dataset = open_dataset(root)
    provenance = read_provenance(dataset.root)
    lines = [licence_verdict(provenance), ""]
    if note:
        lines += [note, ""]
    lines += [f"# Dataset card: {dataset.name}", "", f"Index written {dataset.index.get('created_at')}.", ""]
    balance = _balance(dataset)
    lines += _counts(dataset) + [""] + _balance_section(dataset, provenance, balance) + [""]
    fidelity = _exact_fidelity(dataset, balance)
    lines += fidelity + [""] * bool(fidelity) + _made_by(provenance)
    if provenance is not None:
        lines += ["", "## Licences", ""]
        lines += [f"- **{s.get('name')}** ({s.get('path')}): {s.get('licence')}" for s in provenance.get("stages", [])]
    return "\n".join(lines) + "\n"


def write_card(root: Path) -> Path:
    """Write ``DATASET_CARD.md`` for the committed dataset in ``root``; returns its path."""
    dataset = open_dataset(root)
    path = dataset.layout.card
    write_text_atomic(path, render_card(root))
    return path
