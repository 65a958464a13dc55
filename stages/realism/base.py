"""The realism kind: a stage that scores how real each image looks.

A concrete scorer implements :meth:`RealismStage.score` over the live records of a batch
(per batch, so a network scores in chunks) and names itself in :attr:`RealismStage.scorer`;
the base writes ``record["realism_score"]`` (``None`` when the scorer abstains) and
``record["realism_scorer"]``. A realism stage never drops a record: thresholding is the
filter stage's job.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import ClassVar, TypeVar

from stages.base import Kind, Record, Stage, StageConfig, StageError

__all__ = ["RealismStage"]

C = TypeVar("C", bound=StageConfig)


class RealismStage(Stage[C]):
    kind: ClassVar[Kind] = "realism"
    reads = frozenset({"image"})
    optional_reads = frozenset({"face_crop", "face_score"})  # the aligned crop when a face stage ran
    writes = frozenset({"realism_score", "realism_scorer"})
    # What scored, written to ``realism_scorer`` (e.g. ``heuristic-v1``); a class constant,
    # or set in ``setup()`` when it depends on the model file.
    scorer: str = ""

    @abstractmethod
    def score(self, live: list[Record]) -> Sequence[float | None]:
        """One realism score in [0, 1] per record of ``live`` (``None``: nothing to score)."""

    def run(self, live: list[Record]) -> None:
        scores = self.score(live)  # may run setup() first, which can set the scorer
        if len(scores) != len(live):
            raise StageError(f"realism scorer {self.name!r} gave {len(scores)} scores for {len(live)} records")
        scorer = self.scorer
        for record, value in zip(live, scores, strict=True):
            record["realism_score"] = value
            record["realism_scorer"] = scorer
