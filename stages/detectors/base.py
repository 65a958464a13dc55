"""The AU detector interface and the mapping layer that puts any detector on DISFA's 12 AUs.

Every AU detector stage subclasses :class:`AUDetector` and declares:

- ``vocabulary``: the names of its output columns, in order (``"AU1"``, ``"AU01"``,
  ``"AU1L"``/``"AU1R"``, OpenGraphAU's ``"L1"``/``"R1"`` ...; see :func:`parse_au_name`);
- ``scale``: what one output value means: ``"probability"`` (occurrence probability in
  [0, 1]), ``"binary"`` (0/1 decisions) or ``"intensity_0_5"`` (FACS intensity 0-5);
- optionally ``intensity_vocabulary`` (+ :meth:`AUDetector.predict_intensity`) when a
  probability or binary detector also has an intensity head;
- ``preprocessing`` (free text: what crop/alignment/normalisation its input gets) and
  ``licence`` (of the code and of the weights).

:meth:`AUDetector.predict` returns ``(n, len(vocabulary))`` floats, NaN where it has no
output for a sample. :func:`to_disfa` maps one such row to ``{"occurrence": [12],
"intensity": [12]}`` in ``manifests.vocab.DISFA_AUS`` order:

- an AU the vocabulary does not name, or whose values are all NaN, is ``None`` (missing,
  never 0: "not measured" must not read as "absent");
- several columns for one AU (left/right variants, or a bilateral column next to them)
  combine by **max**: an AU counts as active when it is active on either side, which is how
  FACS scores unilateral actions (``AU12L`` alone is still an AU12);
- ``probability`` gives occurrence only (intensity ``None``), ``binary`` likewise (0/1);
- ``intensity_0_5`` gives intensity clipped to [0, 5] and occurrence ``min(1, intensity)``,
  so thresholding occurrence at 0.5 agrees with rounding intensity to the nearest level
  (0.5 and above round to level >= 1, i.e. active).
"""

from __future__ import annotations

import json
import re
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args

import numpy as np

from manifests.vocab import AU_INDEX, DISFA_AUS, INTENSITY_MAX
from stages.base import Kind, Record, Stage, StageConfig, StageError

__all__ = [
    "SCALES",
    "VOCABULARIES",
    "AUDetector",
    "DisfaVote",
    "MeasuringDetector",
    "Scale",
    "covered_aus",
    "exemplar_for",
    "parse_au_name",
    "read_calibration",
    "record_image",
    "to_disfa",
]

Scale = Literal["probability", "binary", "intensity_0_5"]
SCALES: tuple[str, ...] = get_args(Scale)
DisfaVote = dict[str, list[float | None]]
C = TypeVar("C", bound=StageConfig)
T = TypeVar("T")

# Vocabularies of well-known detectors, so adapters and tests share one spelling.
VOCABULARIES: dict[str, tuple[str, ...]] = {
    # The 8 AUs of DISFA that most detectors share (MAUGen Table 2 "8 shared AUs").
    "disfa8": ("AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26"),
    "disfa12": tuple(f"AU{au}" for au in DISFA_AUS),
    # BP4D's 12 occurrence AUs (FERA 2015), only 6 of which are DISFA AUs.
    "bp4d12": tuple(f"AU{au}" for au in (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)),
    # OpenFace 2.0 presence outputs (AU*_c), OpenFace's zero-padded spelling.
    "openface18": tuple(f"AU{au:02d}" for au in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)),
    # py-feat's 20-AU detectors (xgb / svm).
    "pyfeat20": tuple(
        f"AU{au:02d}" for au in (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 17, 20, 23, 24, 25, 26, 28, 43)
    ),
    # OpenGraphAU (Luo et al. 2022): 27 bilateral AUs then 14 left/right variants.
    "opengraphau41": (
        *(
            f"AU{au}"
            for au in (
                1,
                2,
                4,
                5,
                6,
                7,
                9,
                10,
                11,
                12,
                13,
                14,
                15,
                16,
                17,
                18,
                19,
                20,
                22,
                23,
                24,
                25,
                26,
                27,
                32,
                38,
                39,
            )
        ),
        *(f"AU{side}{au}" for au in (1, 2, 4, 6, 10, 12, 14) for side in ("L", "R")),
    ),
}

# "AU1", "AU01", "au_1", "AU1L", "AU1_R", "AUL1", "L1", "L_AU1", "left AU1", "1", ...
_SIDE = r"(?P<{g}>LEFT|RIGHT|L|R)"
_AU_NAME = re.compile(
    rf"^(?:{_SIDE.format(g='pre')}[_\s-]*)?(?:AU)?[_\s-]*(?:{_SIDE.format(g='mid')}[_\s-]*)?"
    rf"0*(?P<num>\d+)(?:[_\s-]*{_SIDE.format(g='post')})?$"
)


def parse_au_name(name: str | int) -> tuple[int, str | None]:
    """``"AU12L"`` -> ``(12, "L")``; ``"AU04"`` -> ``(4, None)``; raises ``ValueError``.

    The side is reported for information only; the mapping combines sides by max.
    """
    if isinstance(name, int | np.integer):
        return int(name), None
    m = _AU_NAME.match(str(name).strip().upper())
    if m is None or (m["pre"] and m["mid"]):
        raise ValueError(f"cannot read AU name {name!r}; use forms like 'AU1', 'AU01', 'AU1L', 'AUR12' or 'L1'")
    side = m["pre"] or m["mid"] or m["post"]
    return int(m["num"]), (side[0] if side else None)


def _columns_per_au(vocabulary: Sequence[str | int]) -> dict[int, list[int]]:
    """DISFA AU -> the vocabulary column indices that measure it (other AUs are ignored)."""
    out: dict[int, list[int]] = {}
    for col, name in enumerate(vocabulary):
        au, _ = parse_au_name(name)
        if au in AU_INDEX:
            out.setdefault(au, []).append(col)
    return out


def covered_aus(vocabulary: Sequence[str | int]) -> tuple[int, ...]:
    """The DISFA AUs a vocabulary can say something about, in DISFA order."""
    cols = _columns_per_au(vocabulary)
    return tuple(au for au in DISFA_AUS if au in cols)


def _combine(row: np.ndarray, columns: list[int]) -> float | None:
    values = row[columns]
    values = values[~np.isnan(values)]
    return float(values.max()) if values.size else None


def to_disfa(
    raw_row: Sequence[float] | np.ndarray,
    vocabulary: Sequence[str | int],
    scale: Scale,
    *,
    intensity_row: Sequence[float] | np.ndarray | None = None,
    intensity_vocabulary: Sequence[str | int] | None = None,
) -> DisfaVote:
    """Map one detector output row to DISFA's 12 AUs (see the module docstring for rules).

    ``intensity_row``/``intensity_vocabulary`` add a separate 0-5 intensity head to a
    ``probability`` or ``binary`` detector; where given they fill ``intensity``.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown detector scale {scale!r}; allowed: {list(SCALES)}")
    row = np.asarray(raw_row, dtype=np.float64).reshape(-1)
    if row.size != len(vocabulary):
        raise ValueError(f"detector row has {row.size} values but its vocabulary names {len(vocabulary)}")
    occurrence: list[float | None] = [None] * len(DISFA_AUS)
    intensity: list[float | None] = [None] * len(DISFA_AUS)
    for au, columns in _columns_per_au(vocabulary).items():
        value = _combine(row, columns)
        if value is None:
            continue
        i = AU_INDEX[au]
        if scale == "probability":
            occurrence[i] = float(np.clip(value, 0.0, 1.0))
        elif scale == "binary":
            occurrence[i] = 1.0 if value >= 0.5 else 0.0
        else:
            level = float(np.clip(value, 0.0, INTENSITY_MAX))
            intensity[i] = level
            occurrence[i] = min(1.0, level)
    if intensity_row is not None:
        if intensity_vocabulary is None:
            raise ValueError("intensity_row given without intensity_vocabulary")
        head = np.asarray(intensity_row, dtype=np.float64).reshape(-1)
        if head.size != len(intensity_vocabulary):
            raise ValueError(
                f"intensity row has {head.size} values but its vocabulary names {len(intensity_vocabulary)}"
            )
        for au, columns in _columns_per_au(intensity_vocabulary).items():
            value = _combine(head, columns)
            if value is not None:
                intensity[AU_INDEX[au]] = float(np.clip(value, 0.0, INTENSITY_MAX))
    return {"occurrence": occurrence, "intensity": intensity}


def record_image(record: Record, stage: str, use_face_crop: bool = True) -> np.ndarray:
    """The face crop when a face stage left one (and it is wanted), else the whole image."""
    image = record.get("face_crop") if use_face_crop else None
    if image is None:
        image = record.get("image")
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise StageError(
            f"{stage}: record {record.get('key')!r} has no uint8 RGB 'image' (H, W, 3); "
            "put a generator stage before the detectors"
        )
    return image


def exemplar_for(record: Record, bank: Any) -> str | None:
    """The identity whose exemplar photo this record is measured against
    (``stages.faces.exemplar.exemplar_landmarks``), or ``None`` without a bank or identity."""
    identity = record.get("identity_id")
    if bank is None or not identity:
        return None
    return str(identity)


def read_calibration(path: str, detector: str, parse: Callable[[Any], T]) -> T:
    """``parse`` applied to the JSON calibration file ``path`` of ``detector``; a file that
    cannot be read or parsed is one :class:`StageError` naming it and how to write one."""
    p = Path(path)
    try:
        return parse(json.loads(p.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StageError(
            f"{detector} calibration {p} cannot be read ({exc}); "
            f"write one with stages.detectors.{detector}.fit_calibration or unset it"
        ) from exc


class AUDetector(Stage[C]):
    """Base class of every AU detector stage (``kind = "detector"``).

    Subclasses set ``name``, ``vocabulary``, ``scale``, ``preprocessing`` and ``licence``
    (class attributes, or instance attributes set in ``__init__``/``setup`` when they come
    from a model file), and implement :meth:`predict`. :meth:`run` maps each output row
    with :func:`to_disfa` into ``record["detector_votes"][self.name]``; a detector never
    drops a record (no face means missing votes, not a rejection).
    """

    kind: ClassVar[Kind] = "detector"
    reads = frozenset({"image"})
    # The face stage's crop and landmarks when there is one (without them a detector measures
    # the whole image or abstains); the bank identity for exemplar-relative detectors; the
    # votes of the detectors before it, which its own vote joins.
    optional_reads = frozenset({"face_crop", "landmarks", "identity_id", "detector_votes"})
    writes = frozenset({"detector_votes"})
    vocabulary: tuple[str, ...] = ()
    scale: Scale = "probability"
    intensity_vocabulary: tuple[str, ...] = ()
    preprocessing: str = ""

    @abstractmethod
    def predict(self, batch: list[Record]) -> np.ndarray:
        """``(len(batch), len(vocabulary))`` float array; NaN where there is no output."""

    def predict_intensity(self, batch: list[Record]) -> np.ndarray | None:
        """``(len(batch), len(intensity_vocabulary))`` 0-5 intensities, or ``None``."""
        return None

    def outputs(self, batch: list[Record]) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`predict` and :meth:`predict_intensity` of one batch; a detector whose two
        heads share work computes both at once here (:class:`MeasuringDetector`)."""
        return self.predict(batch), self.predict_intensity(batch)

    def _checked(self, out: np.ndarray | None, n: int, width: int, what: str) -> np.ndarray:
        arr = np.asarray(out, dtype=np.float64)
        if arr.shape != (n, width):
            raise StageError(
                f"detector {self.name!r}: {what} returned shape {arr.shape}, expected ({n}, {width}) "
                "(one row per record, one column per vocabulary entry)"
            )
        return arr

    def run(self, live: list[Record]) -> None:
        if not self.vocabulary:
            raise StageError(f"detector {self.name!r} declares no vocabulary")
        raw, head = self.outputs(live)
        raw = self._checked(raw, len(live), len(self.vocabulary), "predict()")
        if head is not None:
            head = self._checked(head, len(live), len(self.intensity_vocabulary), "predict_intensity()")
        for k, record in enumerate(live):
            vote = to_disfa(
                raw[k],
                self.vocabulary,
                self.scale,
                intensity_row=None if head is None else head[k],
                intensity_vocabulary=self.intensity_vocabulary if head is not None else None,
            )
            votes = record.get("detector_votes")
            if votes is None:
                votes = record["detector_votes"] = {}
            votes[self.name] = vote


class MeasuringDetector(AUDetector[C]):
    """A detector that measures 0-5 intensities itself (one per ``intensity_vocabulary``
    entry, NaN to abstain) and reads occurrence off them with a soft threshold:
    ``sigmoid((intensity - threshold) / occurrence_width)``.

    Subclasses implement :meth:`measure` and :meth:`thresholds` for one record. A batch is
    measured once (:meth:`outputs` gives both heads); nothing is kept between calls.
    """

    occurrence_width: ClassVar[float] = 0.15  # sigmoid width in intensity levels

    @abstractmethod
    def measure(self, record: Record) -> np.ndarray:
        """0-5 intensity per ``intensity_vocabulary`` entry for one record; NaN to abstain."""

    @abstractmethod
    def thresholds(self, record: Record) -> np.ndarray:
        """The intensity at occurrence probability 0.5, per ``intensity_vocabulary`` entry."""

    def outputs(self, batch: list[Record]) -> tuple[np.ndarray, np.ndarray]:
        """(occurrence probabilities, 0-5 intensities) of ``batch``, measured once."""
        width = len(self.intensity_vocabulary)
        levels = np.stack([self.measure(r) for r in batch]) if batch else np.zeros((0, width))
        thresholds = np.stack([self.thresholds(r) for r in batch]) if batch else levels
        with np.errstate(over="ignore", invalid="ignore"):
            occurrence = 1.0 / (1.0 + np.exp(-(levels - thresholds) / self.occurrence_width))
        return occurrence, levels

    def predict(self, batch: list[Record]) -> np.ndarray:
        return self.outputs(batch)[0]

    def predict_intensity(self, batch: list[Record]) -> np.ndarray | None:
        return self.outputs(batch)[1]
