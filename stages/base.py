"""The stage interface: small on purpose.

A stage has a name (its registry key), a kind (which step of the pipeline it is) and a
typed config, loads its models once in ``setup()`` and maps a batch of sample records to
the same batch. A record is a plain ``dict`` whose keys are declared once in
``manifests.schema`` (:data:`manifests.schema.Record`: the manifest columns plus, while a
sample is in flight, the transient fields listed there: decoded image array, landmarks, ...).

Every stage class declares the record fields it touches, so a recipe's data flow is checked
when it is loaded, before anything runs (``stages.pipeline.Pipeline.check``):

- ``reads``: fields it needs; the plan or an earlier stage must write each;
- ``optional_reads``: fields it uses when an earlier stage wrote them and does without
  otherwise (a detector abstains without landmarks; the filters drop a sample with no score);
- ``writes``: fields it sets. The drop bookkeeping's :data:`DROP_FIELDS` are every stage's.

The ``key`` field (the sample's name) may be read by any stage for its messages. A class
that never declares ``writes`` (nor inherits a declaration from its kind's base) is refused
by the check: a plugin states its data flow like a registered stage.

The base owns the loop: :meth:`Stage.process` skips records an earlier stage dropped,
hands the live ones to :meth:`Stage.run` (per batch) or, by default, to
:meth:`Stage.run_record` (per record, returning a drop reason or ``None``), and writes the
drop bookkeeping (``dropped_by`` = the stage's name, ``drop_reason``). A concrete stage
writes only its own work. Each kind has a small base in its folder
(``stages/generators/base.py``, ``stages/faces/base.py``, ``stages/detectors/base.py``,
``stages/realism/base.py``); agreement, filters and the prompt stage subclass this one.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict

from manifests.errors import FailedError, UserError
from manifests.schema import Record

__all__ = [
    "DROP_FIELDS",
    "KINDS",
    "UNDECLARED",
    "UNDECLARED_LICENCE",
    "Kind",
    "ModelCheck",
    "ModelFilesError",
    "Record",
    "Stage",
    "StageConfig",
    "StageContext",
    "StageError",
    "drop",
    "is_dropped",
]

# The fields :func:`drop` writes: every stage may drop a record.
DROP_FIELDS: frozenset[str] = frozenset({"dropped_by", "drop_reason"})


class _Undeclared(frozenset[str]):
    """The type of :data:`UNDECLARED` (an empty set told apart from a declared empty one)."""


# ``Stage.writes`` until a class declares it: the chain check refuses a stage that keeps it.
UNDECLARED: frozenset[str] = _Undeclared()
# What a stage that never states its licence reports: the dataset card prints it on its
# first line, so a missing declaration is seen by the people who use the data.
UNDECLARED_LICENCE = "UNDECLARED: this stage does not state the licence of its code and models"
Kind = Literal["prompt", "generator", "face", "detector", "agreement", "realism", "filter"]
KINDS: tuple[str, ...] = get_args(Kind)


class StageError(FailedError, RuntimeError):
    """A stage cannot run at all (missing model file, missing package, ...).

    The message names the file or package and says how to fix it; a stage may add lines of
    its own (the layout a checkpoint folder must have), printed as real lines.
    """

    multiline = True


class ModelFilesError(UserError):
    """A stage's model files are missing or laid out wrong, found by :meth:`Stage.preflight`
    before any model loads (and before Ray starts): one line naming the file, and the
    ``factory models pull NAME`` or recipe key that fixes it."""


@dataclass(frozen=True)
class ModelCheck:
    """A catalogue model file a stage as configured reads, for ``factory doctor``'s table."""

    name: str  # the catalogue entry: `factory models pull NAME` fetches it
    path: Path
    wanted_by: str  # the option that asks for it, e.g. "bg = 'auto'"
    instead: str | None = None  # what runs while the file is missing; None: the stage cannot run


class StageConfig(BaseModel):
    """Base for a stage's recipe section; unknown keys are refused (typos surface early)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


C = TypeVar("C", bound=StageConfig)


@dataclass
class StageContext:
    """What a stage may know about the run it is part of."""

    run_dir: Path
    device: str = "cpu"  # "cuda" inside a GPU actor that sees a device, else "cpu"
    seed: int = 0
    identity_bank: Any = None  # manifests.bank.IdentityBank or None
    image_size: int = 512


def drop(record: Record, stage: str, reason: str) -> Record:
    """Mark ``record`` as rejected by ``stage`` for ``reason`` (first drop wins)."""
    if not record.get("dropped_by"):
        record["dropped_by"] = stage
        record["drop_reason"] = reason
    return record


def is_dropped(record: Record) -> bool:
    """Whether a stage has dropped ``record`` (the pipeline and every stage skip it then)."""
    return bool(record.get("dropped_by"))


class Stage(ABC, Generic[C]):
    """One step of the pipeline.

    A subclass names its config model as the type parameter (``class Mine(Stage[MyConfig])``),
    which sets ``config_model`` and types ``self.config``; it sets ``name`` (the registry key;
    the kind bases set ``kind``) and implements :meth:`run_record` or :meth:`run`.
    ``setup`` is called once per worker before the first batch.

    ``licence`` states the licence of the stage's code *and of every model or data its output
    depends on* (the dataset card lists it for each stage; a non-commercial one marks the whole
    dataset non-commercial). A stage whose licence depends on its configuration (a model folder,
    a spec file) overrides :meth:`licence_notice`, which must work before ``setup()``.

    ``reads``, ``optional_reads`` and ``writes`` declare the record fields it touches (see the
    module docstring); a kind's base declares what every stage of that kind writes.
    """

    name: ClassVar[str]
    kind: ClassVar[Kind]
    config_model: ClassVar[type[StageConfig]] = StageConfig
    licence: ClassVar[str] = UNDECLARED_LICENCE
    # The record fields it needs, uses when present, and sets (see the module docstring).
    reads: ClassVar[frozenset[str]] = frozenset()
    optional_reads: ClassVar[frozenset[str]] = frozenset()
    writes: ClassVar[frozenset[str]] = UNDECLARED

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Its own bases only: a subclass of a concrete stage inherits the parent's __orig_bases__,
        # which would put the parent's config model back over one the subclass sets.
        for base in cls.__dict__.get("__orig_bases__", ()):
            origin = get_origin(base)
            args = get_args(base)
            if isinstance(origin, type) and issubclass(origin, Stage) and args and isinstance(args[0], type):
                cls.config_model = args[0]

    def __init__(self, config: C, context: StageContext) -> None:
        self.config: C = config
        self.context = context

    def setup(self) -> None:
        """Load models once; the default stage has none."""

    def preflight(self) -> None:
        """Check what ``setup()`` will need without loading it (model files and their layout, an
        endpoint the recipe makes essential); raise :class:`ModelFilesError` naming the file and
        the fix. The build calls it on the driver before Ray starts; the default has nothing to check."""

    def licence_notice(self) -> str:
        """The licence of this stage as configured (no ``setup()`` needed): the class's ``licence``."""
        return self.licence

    def model_checks(self) -> list[ModelCheck]:
        """Catalogue files this stage reads as configured, each a row of ``factory doctor``
        (no ``setup()`` needed). The default has none; a stage with a stand-in for a missing
        file names it, so doctor shows a stand-in build as a warning, not a failure."""
        return []

    def model_files(self) -> dict[str, Path]:
        """Model files (or folders) this stage loads, by option name, for the dataset card's
        hashes (no ``setup()`` needed). The default: every option naming an existing path; a
        stage that loads packaged weights adds them."""
        found = {}
        for option, value in self.config.model_dump().items():
            if not isinstance(value, str) or not value or "\n" in value:
                continue
            try:
                if (path := Path(value).expanduser()).exists():
                    found[option] = path
            except OSError:  # a long free-text option is no path
                continue
        return found

    def process(self, batch: list[Record]) -> list[Record]:
        """Run the stage on the live records of ``batch``; returns ``batch`` (same order, same length)."""
        live = [r for r in batch if not is_dropped(r)]
        if live:
            self.run(live)
        return batch

    def run(self, live: list[Record]) -> None:
        """Per-batch work on records no stage has dropped; the default calls :meth:`run_record`."""
        for record in live:
            reason = self.run_record(record)
            if reason:
                drop(record, self.name, reason)

    def run_record(self, record: Record) -> str | None:
        """Per-record work: fill the record's fields; return a drop reason, or ``None`` to keep it."""
        raise NotImplementedError(f"stage {self.name!r} implements neither run() nor run_record()")
