"""Identity-disjoint folds and splits, shared by every format that splits (graphau, libreface,
huggingface), and the base class those formats share.

Before a splitting format writes anything, the loop (``manifests.export.run``) reads the
selection's identity ids once (the same rows, in the same order, that the export writes) and
hands the per-identity sample counts to :meth:`SplitExporter.plan`. Identities are assigned
greedily, largest first (ties by id), each to the group furthest below its share of the
samples; while as many identities are left as groups are still empty, the next goes to an
empty group. So the assignment is deterministic (a resumed export gets the same one), the
groups' sample counts are balanced, and every group is non-empty whenever there are at least
as many identities as groups; with fewer the plan is refused with the identity count and the
two ways out (fewer folds, or ``--split-by sample``).

A fold ``k`` (0-based) tests on group ``k`` and trains on every other group, so no identity is
on both sides of a fold, and every sample is tested in exactly one fold.

``--split-by sample`` assigns samples, not identities, by their position in the selection (a
low-discrepancy sequence mapped onto the shares): test identities are then seen in training,
which ``export.json`` says in a ``warning``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from manifests.atomic import atomic_output, write_bytes_atomic
from manifests.export.base import Exporter, ExportError
from manifests.files import make_dir
from manifests.vocab import AU_INDEX

__all__ = [
    "DEFAULT_FOLDS",
    "DEFAULT_SHARES",
    "SPLIT_BY",
    "SplitExporter",
    "assign_groups",
    "fold_sides",
    "occurrence_label",
    "parse_shares",
    "sample_group",
]

DEFAULT_FOLDS = 3  # DISFA's protocol: three subject-disjoint folds
DEFAULT_SHARES = (0.6, 0.2, 0.2)  # train / validation / test
SPLIT_BY = ("identity", "sample")
THRESHOLDS = (1, 2)
_GOLDEN = 0.6180339887498949  # the fractional part of the golden ratio: an evenly spread sequence
SAMPLE_SPLIT_WARNING = (
    "split by sample (--split-by sample): the same identities appear in training and test, so test scores "
    "measure seen faces, not unseen people"
)


def assign_groups(counts: dict[str, int], shares: Sequence[float]) -> dict[str, int]:
    """Identity -> group: largest identity first, each to the group furthest below its share
    of the samples; every group non-empty when there are enough identities (see the module)."""
    total = sum(counts.values())
    targets = [share * total for share in shares]
    filled = [0] * len(shares)
    members = [0] * len(shares)
    order = sorted(counts, key=lambda identity: (-counts[identity], identity))
    groups: dict[str, int] = {}
    for left, identity in zip(range(len(order), 0, -1), order, strict=True):
        empty = [g for g in range(len(shares)) if members[g] == 0]
        candidates = empty if left <= len(empty) else range(len(shares))
        group = max(candidates, key=lambda g: (targets[g] - filled[g], -g))
        groups[identity] = group
        filled[group] += counts[identity]
        members[group] += 1
    return groups


def sample_group(position: int, shares: Sequence[float]) -> int:
    """The group of the sample at ``position`` of the selection under ``--split-by sample``."""
    point = (position * _GOLDEN) % 1.0
    edge = 0.0
    for group, share in enumerate(shares):
        edge += share
        if point < edge:
            return group
    return len(shares) - 1


def fold_sides(fold: int, groups: int) -> tuple[list[int], list[int]]:
    """(train groups, test groups) of 0-based ``fold``."""
    return [g for g in range(groups) if g != fold], [fold]


def parse_shares(text: str | Sequence[float], sizes: tuple[int, ...] = (3,)) -> tuple[float, ...]:
    """``"0.6,0.2,0.2"`` -> train / validation / test shares (``"0.8,0.2"``: train / test where
    ``sizes`` allows 2); an ExportError naming ``--shares``."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        values = []
    if len(values) not in sizes or any(v <= 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        names = " or ".join({2: "train,test", 3: "train,validation,test"}[n] for n in sizes)
        raise ExportError(f"--shares {text!r}: write positive {names} shares summing to 1")
    return tuple(values)


def occurrence_label(row: dict[str, Any], au: int, threshold: int) -> int | None:
    """0/1 occurrence of ``au`` at ``threshold`` (present at intensity >= threshold; 1: the
    dataset's own occurrence), or ``None`` when uncertain (-1) or not labelled."""
    occurrence = row["au_occurrence"][AU_INDEX[au]]
    if occurrence not in (0, 1):
        return None
    if threshold == 1 or occurrence == 0:
        return int(occurrence)
    intensity = (row.get("au_intensity") or [None] * len(AU_INDEX))[AU_INDEX[au]]
    if intensity is None or intensity < 0:
        return None
    return int(intensity >= threshold)


class SplitExporter(Exporter):
    """A format that writes identity-disjoint groups (folds, or train/validation/test splits).

    Subclasses say which groups they want (:meth:`shares`), which samples they keep
    (:meth:`keeps`: a sample it cannot label is left out, and not counted), and use
    :meth:`group_of` per sample. ``self.position`` is the selection position of the next
    sample (the loop sets it; a resumed export starts after the committed rows)."""

    count_columns: tuple[str, ...] = ("identity_id",)
    position = 0
    groups: dict[str, int] | None = None

    @property
    def split_by(self) -> str:
        choice = str(self.option("split_by", "identity"))
        if choice not in SPLIT_BY:
            raise ExportError(f"--split-by {choice!r}: choose one of {', '.join(SPLIT_BY)}")
        return choice

    @property
    def threshold(self) -> int:
        value = self.option("occurrence_threshold", 1)
        if value not in THRESHOLDS:
            raise ExportError(
                f"--occurrence-threshold {value!r}: choose 1 (MIFA's occurrence) or 2 (ME-GraphAU's DISFA)"
            )
        return int(value)

    @property
    def folds(self) -> int:
        value = self.option("folds", DEFAULT_FOLDS)
        if not isinstance(value, int) or value < 2:
            raise ExportError(f"--folds {value!r}: write a whole number of folds >= 2")
        return value

    def shares(self) -> tuple[float, ...]:
        """The groups' shares of the samples (default: ``folds`` equal groups)."""
        return tuple([1.0 / self.folds] * self.folds)

    def keeps(self, row: dict[str, Any]) -> bool:
        return True

    def noun(self) -> str:
        return "folds"

    def plan(self, rows: Iterable[dict[str, Any]]) -> None:
        """Assign the selection's identities to groups (``rows``: the selection, ``count_columns``)."""
        counts = Counter(str(row["identity_id"]) for row in rows if self.keeps(row))
        shares = self.shares()
        if self.split_by == "sample":
            self.groups = None
            if sum(counts.values()) < len(shares):
                raise ExportError(f"{sum(counts.values())} samples cannot fill {len(shares)} {self.noun()}")
            return
        if len(counts) < len(shares):
            raise ExportError(
                f"the selection holds {len(counts)} identit{'y' if len(counts) == 1 else 'ies'}, too few for "
                f"{len(shares)} identity-disjoint {self.noun()}: pass {self.fewer_hint(len(counts))}"
                "--split-by sample (test identities are then seen in training; export.json warns)"
            )
        self.groups = assign_groups(dict(counts), shares)

    def fewer_hint(self, identities: int) -> str:
        return f"--folds {identities}, or " if identities >= 2 else ""

    def group_of(self, row: dict[str, Any]) -> int:
        """The group of this sample (call once per sample, in selection order)."""
        position = self.position
        self.position += 1
        if self.groups is None:
            return sample_group(position, self.shares())
        return self.groups[str(row["identity_id"])]

    def skip(self) -> None:
        """A sample the format leaves out still takes its place in the selection."""
        self.position += 1

    def split_report(self) -> dict[str, Any]:
        """What ``export.json`` says about the split (and a warning for a split by sample)."""
        report: dict[str, Any] = {"split_by": self.split_by, "occurrence_threshold": self.threshold}
        if self.groups is not None:
            report["identities"] = len(self.groups)
        if self.split_by == "sample":
            report["warning"] = SAMPLE_SPLIT_WARNING
        return report

    def _fragment(self, part: int, group: int, kind: str) -> Path:
        return self.layout.parts / f"{self.name}-{part:06d}-g{group}.{kind}"

    def write_fragments(self, part: int, kind: str, lines: list[list[str]]) -> None:
        """This part's lines of ``kind``, one fragment per group (joined by :meth:`join`)."""
        make_dir(self.layout.parts)
        for group, group_lines in enumerate(lines):
            text = "".join(line + "\n" for line in group_lines)
            write_bytes_atomic(self._fragment(part, group, kind), text.encode(), sync_dir=False)

    def join(self, target: Path, parts: int, groups: list[int], kind: str, header: str | None = None) -> None:
        """Write ``target``: ``header``, then the ``kind`` lines of ``groups`` from every part."""
        make_dir(target.parent)
        with atomic_output(target) as tmp, open(tmp, "w") as fh:
            if header is not None:
                fh.write(header + "\n")
            for group in groups:
                for part in range(parts):
                    with open(self._fragment(part, group, kind)) as fragment:
                        for line in fragment:
                            fh.write(line)

    def check_sides(self, sides: dict[str, int]) -> None:
        """Refuse an export that would leave a fold or split side empty (a trainer's loader fails on it)."""
        empty = [name for name, n in sides.items() if n == 0]
        if empty:
            raise ExportError(
                f"{empty[0]} would hold no sample (the selection's labelled samples are too few to split); "
                "select more samples or pass fewer --folds"
            )
