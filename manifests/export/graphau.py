"""ME-GraphAU and OpenGraphAU training lists: ``img/`` + ``list/`` as their loaders read them.

``layout="disfa"`` (default), for CVI-SZU/ME-GraphAU's ``dataset.py`` class ``DISFA``, which
reads under its config's ``dataset_path`` (``config/DISFA_config.yaml``): ``img/<path>`` and
``list/DISFA_{train|test}_img_path_fold{k}.txt`` (one path per line, relative to ``img/``),
``list/DISFA_{train|test}_label_fold{k}.txt`` (0/1 rows, ``np.loadtxt``),
``list/DISFA_weight_fold{k}.txt`` (per-AU loss weights, ``train_stage1.py``) and
``list/DISFA_train_AU_relation_fold{k}.txt`` (stage 2: ``2 * a_j + a_k`` for every AU pair, as
their ``tool/DISFA_deal_AU_relation.py``). AUs: their DISFA eight (1, 2, 4, 6, 9, 12, 25, 26),
or all 12 with ``aus="disfa12"``. ``k`` runs over ``folds`` identity-disjoint folds
(``manifests.export.folds``; ME-GraphAU's ``DISFA`` accepts folds 1 to 3).

``layout="opengraphau"``, for the OpenGraphAU folder's ``dataset.py`` class ``HybridDataset``:
``list/hybrid_{train|val|test}_{img_path|label}.txt`` with their 41 AU columns in their order
(``OPENGRAPHAU_AUS``, from their ``tool/dataset_process.py``), our 12 in the columns that tool
gives DISFA's AUs, every other column -1: that tool pads an AU a dataset does not label with
-1, their ``WeightedAsymmetricLoss`` drops -1 labels (``mask = y != -1``) and their F1
``statistics`` skips them. Also ``list/hybrid_train_weight.txt`` (41 weights,
``train_stage1.py`` and ``train_stage2.py``); train / val / test split by identity in
``shares``. Their ``train_stage2.py`` builds ``HybridDataset(stage=1)``, so stage 2 reads the
same files; ``HybridDataset(stage=2)`` also reads ``list/hybrid_train_AU_relation.txt``
(``np.loadtxt``, ``au_relation[i, :]``), which no public tool of theirs writes. We write it as
ME-GraphAU's ``tool/DISFA_deal_AU_relation.py`` does (``2 * a_j + a_k``, one column per AU
pair ``j * n + k``) over the 27 main AUs, the nodes of their stage-2 model (``MEFL.Head``'s
``GEM(in_channels, num_main_classes)``, 27 x 27 edges); a pair with an unlabelled (-1) AU is
written -100, the ``ignore_index`` of the ``nn.CrossEntropyLoss()`` ME-GraphAU's stage 2 puts
on these labels (``2 * a_j + a_k`` of a -1 would give -3..2 and collide with real classes).

Both write ``list/*_identity*.txt`` beside the paths (one identity id per line, the same
order), which their loaders ignore and identity-adversarial training can read. A label row is
written with ``%d`` integers. Their loaders call ``np.loadtxt(label_file)``, which returns a
1-D array for a one-row file that their ``label_list[i, :]`` cannot index; so a one-sample
side's label file holds its row twice: ``np.loadtxt`` then returns 2-D, and their
``make_dataset`` reads as many label rows as there are image paths (one). Samples with an
uncertain label (-1) on an exported AU are left out and counted in ``export.json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from manifests.atomic import atomic_output, write_bytes_atomic, write_text_atomic
from manifests.export.base import ExportError, Sample
from manifests.export.folder import write_image
from manifests.export.folds import SplitExporter, fold_sides, occurrence_label, parse_shares
from manifests.export.provenance import write_derived_card
from manifests.files import make_dir
from manifests.layout import safe_component
from manifests.vocab import DISFA_AUS

__all__ = ["GRAPHAU_AUS", "LAYOUTS", "OPENGRAPHAU_AUS", "GraphAUExporter"]

GRAPHAU_AUS = {"disfa8": (1, 2, 4, 6, 9, 12, 25, 26), "disfa12": DISFA_AUS}
LAYOUTS = ("disfa", "opengraphau")
# OpenGraphAU's 27 main AUs then 14 sided sub-AUs, as their tool/dataset_process.py lists them.
_MAIN = (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 25, 26, 27, 32, 38, 39)
_SIDED = (1, 2, 4, 6, 10, 12, 14)
OPENGRAPHAU_AUS: tuple[str, ...] = (
    *[str(au) for au in _MAIN],
    *[f"{side}{au}" for au in _SIDED for side in "LR"],
)
SPLITS = ("train", "val", "test")


class GraphAUExporter(SplitExporter):
    name = "graphau"
    columns = ("identity_id", "au_occurrence", "au_intensity")
    count_columns = ("identity_id", "au_occurrence", "au_intensity")
    required = ("au_occurrence",)

    @property
    def layout_name(self) -> str:
        choice = self.option("layout", "disfa")
        if choice not in LAYOUTS:
            raise ExportError(f"--layout {choice!r}: choose one of {', '.join(LAYOUTS)}")
        return str(choice)

    @property
    def aus(self) -> tuple[int, ...]:
        if self.layout_name == "opengraphau":
            return DISFA_AUS
        choice = self.option("aus", "disfa8")
        if choice not in GRAPHAU_AUS:
            raise ExportError(f"--aus {choice!r}: choose one of {', '.join(GRAPHAU_AUS)}")
        return GRAPHAU_AUS[choice]

    @property
    def list_name(self) -> str:
        return safe_component(str(self.option("list_name", "DISFA")), 40)

    def shares(self) -> tuple[float, ...]:
        if self.layout_name == "opengraphau":
            return parse_shares(self.option("shares", "0.6,0.2,0.2"))
        return super().shares()

    def noun(self) -> str:
        return "train/val/test splits" if self.layout_name == "opengraphau" else "folds"

    def fewer_hint(self, identities: int) -> str:
        return "" if self.layout_name == "opengraphau" else super().fewer_hint(identities)

    def labels(self, row: dict[str, Any]) -> list[int] | None:
        values = [occurrence_label(row, au, self.threshold) for au in self.aus]
        return None if any(v is None for v in values) else [int(v) for v in values if v is not None]

    def keeps(self, row: dict[str, Any]) -> bool:
        return self.labels(row) is not None

    def label_line(self, labels: list[int]) -> str:
        if self.layout_name == "disfa":
            return " ".join(str(v) for v in labels)
        wide = ["-1"] * len(OPENGRAPHAU_AUS)
        for au, value in zip(self.aus, labels, strict=True):
            wide[OPENGRAPHAU_AUS.index(str(au))] = str(value)
        return " ".join(wide)

    def write_part(self, part: int, samples: Iterator[Sample]) -> dict[str, Any]:
        make_dir(self.inside("img", f"{part:06d}"))
        n = len(self.shares())
        lines: dict[str, list[list[str]]] = {kind: [[] for _ in range(n)] for kind in ("img", "label", "id")}
        positives = [[0] * len(self.aus) for _ in range(n)]
        skipped = 0
        for sample in samples:
            labels = self.labels(sample.row)
            if labels is None:
                skipped += 1
                self.skip()
                continue
            group = self.group_of(sample.row)
            lines["img"][group].append(write_image(self, "img", part, sample)[len("img/") :])
            lines["label"][group].append(self.label_line(labels))
            lines["id"][group].append(str(sample.row["identity_id"]))
            positives[group] = [p + v for p, v in zip(positives[group], labels, strict=True)]
        for kind, by_group in lines.items():
            self.write_fragments(part, kind, by_group)
        return {"groups": [len(g) for g in lines["img"]], "positives": positives, "skipped_uncertain": skipped}

    def finish(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        lists = self.inside("list")
        make_dir(lists)
        sides = self._sides(parts)
        self.check_sides({name: count for name, (_, count) in sides.items()})
        for name, (groups, count) in sides.items():
            for kind, file in (("img", "img_path"), ("label", "label"), ("id", "identity")):
                self.join(lists / name.replace("{}", file), len(parts), groups, kind)
            if count == 1:
                _repeat_single_row(lists / name.replace("{}", "label"))
        if self.layout_name == "disfa":
            self._disfa_extras(parts)
        else:
            self._write_weights(lists / "hybrid_train_weight.txt", parts, [0], wide=True)
            _write_relations(lists / "hybrid_train_label.txt", lists / "hybrid_train_AU_relation.txt", len(_MAIN))
        write_derived_card(self.run_dir, self.out)
        write_text_atomic(self.out / "README.md", self._readme())
        return {
            "layout": self.layout_name,
            "aus": list(self.aus),
            "list_name": self.list_name if self.layout_name == "disfa" else "hybrid",
            **self._counts(sides),
            "skipped_uncertain": sum(int(p["skipped_uncertain"]) for p in parts),
            **self.split_report(),
        }

    def _counts(self, sides: dict[str, tuple[list[int], int]]) -> dict[str, Any]:
        counts = [count for _, count in sides.values()]
        if self.layout_name == "opengraphau":
            return {"splits": dict(zip(SPLITS, counts, strict=True))}
        folds = [{"fold": k + 1, "train": counts[2 * k], "test": counts[2 * k + 1]} for k in range(self.folds)]
        return {"folds": folds}

    def _sides(self, parts: list[dict[str, Any]]) -> dict[str, tuple[list[int], int]]:
        """List file pattern (``{}`` = img_path / label / identity) -> (groups, samples)."""

        def count(groups: list[int]) -> int:
            return sum(int(p["groups"][g]) for p in parts for g in groups)

        if self.layout_name == "opengraphau":
            return {f"hybrid_{split}_{{}}.txt": ([g], count([g])) for g, split in enumerate(SPLITS)}
        sides = {}
        for fold in range(self.folds):
            train, test = fold_sides(fold, self.folds)
            sides[f"{self.list_name}_train_{{}}_fold{fold + 1}.txt"] = (train, count(train))
            sides[f"{self.list_name}_test_{{}}_fold{fold + 1}.txt"] = (test, count(test))
        return sides

    def _disfa_extras(self, parts: list[dict[str, Any]]) -> None:
        lists, name = self.inside("list"), self.list_name
        for fold in range(self.folds):
            train, _ = fold_sides(fold, self.folds)
            labels = lists / f"{name}_train_label_fold{fold + 1}.txt"
            _write_relations(labels, lists / f"{name}_train_AU_relation_fold{fold + 1}.txt", len(self.aus))
            self._write_weights(lists / f"{name}_weight_fold{fold + 1}.txt", parts, train, wide=False)

    def _write_weights(self, target: Any, parts: list[dict[str, Any]], groups: list[int], *, wide: bool) -> None:
        """ME-GraphAU's loss weights: 1 / occurrence rate, scaled to sum to the AU count (an
        OpenGraphAU column we do not label gets the mean weight)."""
        n = sum(int(p["groups"][g]) for p in parts for g in groups)
        positives = [sum(p["positives"][g][i] for p in parts for g in groups) for i in range(len(self.aus))]
        inverse = [max(n, 1) / max(c, 1) for c in positives]  # an AU never present would divide by zero
        weights = [w / sum(inverse) * len(inverse) for w in inverse]
        if wide:
            full = [1.0] * len(OPENGRAPHAU_AUS)
            for au, weight in zip(self.aus, weights, strict=True):
                full[OPENGRAPHAU_AUS.index(str(au))] = weight
            weights = [w / sum(full) * len(full) for w in full]
        write_bytes_atomic(target, ("\t".join(f"{w:f}" for w in weights) + "\n").encode())

    def _readme(self) -> str:
        threshold = (
            f"An AU is 1 when present at intensity >= {self.threshold} (`--occurrence-threshold`; ME-GraphAU's "
            "DISFA preprocessing, tool/DISFA_image_label_process.py, uses 2; OpenGraphAU's tool/dataset_process.py "
            "uses 1 for DISFA). Samples uncertain on an exported AU are left out."
        )
        if self.layout_name == "opengraphau":
            return (
                "# OpenGraphAU lists (MIFA export)\n\nOpenGraphAU's `conf.py` reads `config/hybrid_config.yaml` "
                "(lingjivoo/OpenGraphAU ships it there; ME-GraphAU's OpenGraphAU folder ships it as "
                "`conf/hybrid_config.yaml`: copy it to `config/`); in it set "
                f"`dataset_path: '{self.out.resolve()}'`, then run `python train_stage1.py` (and later "
                "`python train_stage2.py --resume <stage-1 checkpoint>`) there (their `--dataset` default, "
                "hybrid, names list/hybrid_train_weight.txt). The 41 label columns are OpenGraphAU's "
                f"order ({' '.join(OPENGRAPHAU_AUS)}); MIFA labels AUs {', '.join(map(str, self.aus))}, every "
                "other column is -1 (unlabelled: their loss and F1 skip it). Their `train_stage2.py` reads the "
                "same lists; for `HybridDataset(stage=2)`, list/hybrid_train_AU_relation.txt holds "
                "`2 * a_j + a_k` for every pair of the 27 main AUs (column `j * 27 + k`, as ME-GraphAU's "
                "tool/DISFA_deal_AU_relation.py), -100 (CrossEntropyLoss's ignore_index) where either is -1. "
                f"train / val / test hold disjoint identities (list/hybrid_*_identity.txt). {threshold}\n"
            )
        return (
            "# ME-GraphAU DISFA lists (MIFA export)\n\nME-GraphAU reads the dataset folder from its config, not "
            "from the command line: in `config/DISFA_config.yaml` set "
            f"`dataset_path: '{self.out.resolve()}'` and `num_classes: {len(self.aus)}`, then run "
            "`python train_stage1.py --dataset DISFA --fold 1` (folds 1 to 3; stage 2 reads "
            f"list/{self.list_name}_train_AU_relation_fold*.txt). Label columns: AUs "
            f"{', '.join(map(str, self.aus))}. Fold k tests on identities no other fold tests on and trains on "
            f"the rest (list/*_identity_fold*.txt). {threshold}\n"
        )


def _write_relations(labels: Path, target: Path, nodes: int) -> None:
    """ME-GraphAU's AU relation list from a label list: ``2 * a_j + a_k`` for the first ``nodes``
    label columns (-100 where either is -1); one row per label row, so a one-row list's doubled
    row (``_repeat_single_row``) is doubled here too."""
    with atomic_output(target) as relations, open(relations, "w") as fh:
        for line in labels.read_text().splitlines():
            a = [int(v) for v in line.split()[:nodes]]
            fh.write(" ".join(str(2 * x + y if min(x, y) >= 0 else -100) for x in a for y in a) + "\n")


def _repeat_single_row(labels: Path) -> None:
    """Write a one-row label list's row twice (see the module docstring: np.loadtxt's 1-D case)."""
    row = labels.read_text()
    write_text_atomic(labels, row + row)
