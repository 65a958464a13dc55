"""Plugin stages for the chain tests (loaded as "tests.stages.chain_plugins:Class"); never registered."""

from __future__ import annotations

from stages.base import Record, Stage, StageConfig
from stages.realism.base import RealismStage


class MisspeltRealism(RealismStage[StageConfig]):
    """A realism plugin that declares a field the schema does not know (``realism_scor``)."""

    name = "misspelt-realism"
    writes = frozenset({"realism_scor", "realism_scorer"})

    def score(self, live: list[Record]) -> list[float | None]:
        return [0.5 for _ in live]


class Undeclared(Stage[StageConfig]):
    """A filter plugin that states nothing about the fields it touches."""

    name = "undeclared"
    kind = "filter"

    def run_record(self, record: Record) -> str | None:
        return None


class SetsAccepted(Stage[StageConfig]):
    """A filter plugin that claims a column only the shard writer sets."""

    name = "sets-accepted"
    kind = "filter"
    writes = frozenset({"accepted"})

    def run_record(self, record: Record) -> str | None:
        return None
