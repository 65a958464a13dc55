"""``factory report RUN``: one self-contained HTML page about a dataset (or subset).

Plots are matplotlib PNGs and the contact sheets JPEGs, all embedded as base64 ``data:``
URIs: the page has no script, no external file and no network access, so it opens offline,
prints, and renders the same in any browser. (Chosen over plotly, whose inlined JavaScript
alone is ~3.5 MB and whose plots exist only once that script has run.)

Sections: counts and the licence verdict (from the dataset card), AU occurrence and
intensity histograms against the plan (and the recipe's targets), the AU co-occurrence
heatmap, demographic and emotion balance, the acceptance funnel by stage with the top drop
reasons, per-AU detector agreement, label fidelity when exact labels exist, and a contact
sheet per emotion. Numbers come from DuckDB aggregates (``data.py``), so memory does not
grow with the dataset.
"""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path

from factory.commands.report.data import ReportData, collect
from factory.commands.report.plots import (
    plot_agreement,
    plot_au_occurrence,
    plot_cooccurrence,
    plot_demographics,
    plot_fidelity,
    plot_funnel,
    plot_intensity,
)
from factory.commands.report.sheets import ContactSheet, contact_sheets
from manifests.atomic import write_text_atomic
from manifests.balance import read_targets
from manifests.balance_report import causes_from, shard_manifests
from manifests.card import licence_verdict, read_provenance
from manifests.dataset import DatasetRef
from manifests.layout import shard_paths
from manifests.store import location

__all__ = ["build_report", "render_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1240px; color: #222; }
h1 { margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ccc; padding-bottom: 4px; }
img.plot { display: block; max-width: 100%; margin: 12px 0; }
.sheet { display: flex; flex-wrap: wrap; gap: 4px; margin: 4px 0 14px; }
.sheet figure { margin: 0; width: 128px; }
.sheet img { display: block; }
.sheet figcaption { font-family: monospace; font-size: 11px; color: #555; overflow-wrap: anywhere; }
.licence { background: #fff4e0; border: 1px solid #e0b060; padding: 8px 12px; }
table { border-collapse: collapse; font-size: 13px; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
"""


def _img(data: bytes, kind: str, css: str, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img class="{css}" alt="{html.escape(alt)}" src="data:image/{kind};base64,{encoded}">'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _drops_table(data: ReportData, top: int = 12) -> str:
    _, _, drops = data.funnel
    ranked = sorted(((n, stage, reason) for stage, r in drops.items() for reason, n in r.items()), reverse=True)
    if not ranked:
        return "<p>No sample was dropped in the indexed shards.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(stage)}</td><td>{html.escape(reason)}</td><td>{n}</td></tr>"
        for n, stage, reason in ranked[:top]
    )
    return f"<table><tr><th>stage</th><th>drop reason</th><th>samples</th></tr>{rows}</table>"


def _infeasible_table(dataset: DatasetRef) -> str | None:
    """A balanced build's infeasible cells and why each is (``manifests.balance_report``), or
    None for an open-loop build or a subset."""
    if not dataset.shards or dataset.subset is not None:
        return None
    targets = read_targets(shard_paths(dataset.shards_dir, dataset.name, dataset.shards[-1]))
    if targets is None:
        return None
    causes = causes_from(shard_manifests(dataset.shards_dir, dataset.name, dataset.shards), targets)
    if not causes:
        return "<p>Every cell of the recipe was feasible.</p>"
    rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{html.escape(why)}</td></tr>" for c, why in causes.items())
    return f"<table><tr><th>infeasible cell</th><th>why</th></tr>{rows}</table>"


def _sheets(sheets: dict[str, ContactSheet]) -> str:
    if not sheets:
        return "<p>No accepted sample with an image.</p>"
    parts = []
    for emotion, samples in sheets.items():
        # One figure per sample: the key is the caption of its own image, so they cannot drift apart.
        figures = "".join(
            f"<figure>{_img(thumb, 'jpeg', 'thumb', key)}<figcaption>{html.escape(key)}</figcaption></figure>"
            for key, thumb in samples
        )
        parts.append(f'<h3>{html.escape(emotion)}</h3>\n<div class="sheet">{figures}</div>')
    return "\n".join(parts)


def render_report(run_dir: Path, *, per_emotion: int = 8) -> str:
    """The report page of the dataset or subset in ``run_dir``."""
    with tempfile.TemporaryDirectory(prefix="mifa-report-") as spill:
        data = collect(run_dir, spill_dir=Path(spill))
    dataset = data.dataset
    verdict = licence_verdict(read_provenance(dataset.root)).replace("**", "")
    kind = "subset" if dataset.subset is not None else "dataset"
    summary = (
        f"{kind} {html.escape(dataset.name)} in {html.escape(str(dataset.root))}: {data.accepted} accepted of "
        f"{data.planned} samples, {len(dataset.shards)} shards; index written {dataset.index.get('created_at')}."
    )
    if dataset.index.get("short"):  # a balanced build ended short of its target at the waste bound
        summary += f" Ended short of the target: {html.escape(str(dataset.index['short']))}."
    sections = [
        _section("au-occurrence", "AU occurrence", _img(plot_au_occurrence(data), "png", "plot", "AU occurrence")),
        _section("au-intensity", "AU intensity", _img(plot_intensity(data), "png", "plot", "AU intensity")),
        _section("co-occurrence", "AU co-occurrence", _img(plot_cooccurrence(data), "png", "plot", "co-occurrence")),
        _section("balance", "Demographic balance", _img(plot_demographics(data), "png", "plot", "balance")),
        _section(
            "funnel",
            "Acceptance funnel",
            _img(plot_funnel(data, data.stage_order), "png", "plot", "funnel") + _drops_table(data),
        ),
        _section("agreement", "Detector agreement", _img(plot_agreement(data), "png", "plot", "detector agreement")),
    ]
    infeasible = _infeasible_table(dataset)
    if infeasible is not None:
        sections.append(_section("infeasible", "Infeasible cells ([balance])", infeasible))
    if data.exact_samples:
        sections.append(
            _section("fidelity", "Label fidelity (exact labels)", _img(plot_fidelity(data), "png", "plot", "fidelity"))
        )
    sections.append(
        _section("contact-sheets", "Contact sheets", _sheets(contact_sheets(dataset, run_dir, per_emotion)))
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>MIFA report: {html.escape(dataset.name)}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>MIFA dataset report: {html.escape(dataset.name)}</h1>\n<p>{summary}</p>\n"
        f'<p class="licence">{html.escape(verdict)}</p>\n' + "\n".join(sections) + "\n</body></html>\n"
    )


def build_report(run_dir: Path, out: Path | None = None, *, per_emotion: int = 8) -> Path:
    """Write the report page (default: ``report.html`` in the dataset folder); returns its path."""
    page = render_report(run_dir, per_emotion=per_emotion)
    path = location(out) if out is not None else location(run_dir) / "report.html"
    write_text_atomic(path, page)
    return path
