"""ME-GraphAU / OpenGraphAU training lists: ``img/`` + ``list/`` as their DISFA loader reads them.

CVI-SZU/ME-GraphAU's ``dataset.py`` (class ``DISFA``) reads, under ``--dataset_path``:
``img/<path>`` images and ``list/{NAME}_{train|test}_img_path_fold{k}.txt`` (one path per
line, relative to ``img/``), ``list/{NAME}_{train|test}_label_fold{k}.txt`` (one row of 0/1
per image, space separated, ``np.loadtxt``), ``list/{NAME}_weight_fold{k}.txt`` (per-AU loss
weights, ``train_stage1.py``) and ``list/{NAME}_train_AU_relation_fold{k}.txt`` (stage 2:
``2 * a_j + a_k`` for every AU pair, as their ``tool/DISFA_deal_AU_relation.py`` computes).
``NAME`` defaults to ``DISFA`` and the AUs to their DISFA eight (1, 2, 4, 6, 9, 12, 25, 26),
so ``python train_stage1.py --dataset DISFA --dataset_path OUT`` trains on MIFA unchanged and
the paper's Table 4 (train on synthetic / real / both, test on real DISFA) is one command
away; ``format_options={"aus": "disfa12"}`` writes all 12 MIFA AUs instead.

Three folds split by identity, as DISFA's protocol splits by subject: every identity falls in
one of three groups (by a hash of its id); fold ``k`` tests on group ``3 - k`` and trains on
the other two, so no identity is in both halves of a fold. Samples with an uncertain label
(-1) on an exported AU are left out (counted in ``export.json``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from manifests.atomic import atomic_output, write_bytes_atomic
from manifests.export.base import Exporter, ExportError, Sample
from manifests.export.folder import write_image
from manifests.export.provenance import write_derived_card
from manifests.files import make_dir
from manifests.layout import safe_component
from manifests.vocab import AU_INDEX, DISFA_AUS

__all__ = ["GRAPHAU_AUS", "GraphAUExporter", "identity_group"]

GRAPHAU_AUS = {"disfa8": (1, 2, 4, 6, 9, 12, 25, 26), "disfa12": DISFA_AUS}
FOLDS = 3


def identity_group(identity_id: str, groups: int = FOLDS) -> int:
    """The identity's group, stable across runs and machines (md5 of the id)."""
    return int(hashlib.md5(identity_id.encode("utf-8", "surrogateescape")).hexdigest(), 16) % groups


class GraphAUExporter(Exporter):
    name = "graphau"
    columns = ("identity_id", "au_occurrence")
    required = ("au_occurrence",)

    @property
    def aus(self) -> tuple[int, ...]:
        choice = self.option("aus", "disfa8")
        if choice not in GRAPHAU_AUS:
            raise ExportError(f"graphau option aus={choice!r}: choose one of {', '.join(GRAPHAU_AUS)}")
        return GRAPHAU_AUS[choice]

    @property
    def list_name(self) -> str:
        return safe_component(str(self.option("list_name", "DISFA")), 40)

    def _fragment(self, part: int, group: int, kind: str) -> Path:
        return self.layout.parts / f"graphau-{part:06d}-g{group}.{kind}"

    def write_part(self, part: int, samples: Iterator[Sample]) -> dict[str, Any]:
        positions = [AU_INDEX[au] for au in self.aus]
        make_dir(self.inside("img", f"{part:06d}"))
        paths: list[list[str]] = [[] for _ in range(FOLDS)]
        labels: list[list[str]] = [[] for _ in range(FOLDS)]
        positives = [[0] * len(positions) for _ in range(FOLDS)]
        skipped = 0
        for sample in samples:
            occurrence = [sample.row["au_occurrence"][i] for i in positions]
            if any(v not in (0, 1) for v in occurrence):
                skipped += 1
                continue
            group = identity_group(str(sample.row["identity_id"]))
            paths[group].append(write_image(self, "img", part, sample)[len("img/") :])
            labels[group].append(" ".join(str(int(v)) for v in occurrence))
            positives[group] = [p + int(v) for p, v in zip(positives[group], occurrence, strict=True)]
        make_dir(self.layout.parts)
        for group in range(FOLDS):
            for kind, lines in (("img", paths[group]), ("label", labels[group])):
                text = "".join(line + "\n" for line in lines)
                write_bytes_atomic(self._fragment(part, group, kind), text.encode(), sync_dir=False)
        counts = [len(p) for p in paths]
        return {"groups": counts, "positives": positives, "skipped_uncertain": skipped}

    def _join(self, target: Path, parts: int, groups: list[int], kind: str, relation: TextIO | None) -> None:
        with atomic_output(target) as tmp, open(tmp, "w") as fh:
            for group in groups:
                for part in range(parts):
                    with open(self._fragment(part, group, kind)) as fragment:
                        for line in fragment:
                            fh.write(line)
                            if relation is not None:
                                a = [int(v) for v in line.split()]
                                relation.write(" ".join(str(2 * x + y) for x in a for y in a) + "\n")

    def finish(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        lists = self.inside("list")
        make_dir(lists)
        name, n = self.list_name, len(parts)
        folds = []
        for fold in range(1, FOLDS + 1):
            test = FOLDS - fold
            train = [g for g in range(FOLDS) if g != test]
            for split, groups in (("train", train), ("test", [test])):
                self._join(lists / f"{name}_{split}_img_path_fold{fold}.txt", n, groups, "img", None)
            with atomic_output(lists / f"{name}_train_AU_relation_fold{fold}.txt") as rel, open(rel, "w") as fh:
                self._join(lists / f"{name}_train_label_fold{fold}.txt", n, train, "label", fh)
            self._join(lists / f"{name}_test_label_fold{fold}.txt", n, [test], "label", None)
            weights = self._weights(parts, train)
            write_bytes_atomic(
                lists / f"{name}_weight_fold{fold}.txt", ("\t".join(f"{w:f}" for w in weights) + "\n").encode()
            )
            folds.append(
                {
                    "fold": fold,
                    "train": sum(p["groups"][g] for p in parts for g in train),
                    "test": sum(p["groups"][test] for p in parts),
                }
            )
        write_derived_card(self.run_dir, self.out)
        return {
            "aus": list(self.aus),
            "list_name": name,
            "folds": folds,
            "skipped_uncertain": sum(int(p["skipped_uncertain"]) for p in parts),
        }

    def _weights(self, parts: list[dict[str, Any]], groups: list[int]) -> list[float]:
        """ME-GraphAU's loss weights: 1 / occurrence rate, scaled to sum to the AU count."""
        n = sum(p["groups"][g] for p in parts for g in groups)
        positives = [sum(p["positives"][g][i] for p in parts for g in groups) for i in range(len(self.aus))]
        rates = [max(c, 1) / max(n, 1) for c in positives]  # an AU never present would divide by zero
        inverse = [1.0 / r for r in rates]
        total = sum(inverse)
        return [w / total * len(inverse) for w in inverse]
