"""``warp`` generator: an identity photo warped into a planned AU expression (exact labels).

CPU only, no model downloads. For each record it takes the identity's exemplar photo
(``context.identity_bank.image(record["identity_id"])``) and the planned 12-vector of AU
intensities, moves the 68 dlib landmarks by the documented model in
:mod:`stages.generators.warp.model`, and warps the photo with a piecewise-affine map over a Delaunay
triangulation of the landmarks plus fixed anchor points (a ring around the face and a far
square, so hair and background stay put). Where the lips part it paints a mouth interior
(dark cavity, a hint of upper teeth); where FACS names wrinkles or furrows as the sign of an
AU it adds soft shading. Because the expression is made from the label, the labels are the
plan itself: ``label_source = "exact"``.

The mesh is :mod:`stages.generators.warp.mesh`, the rendering (jitter, crop, warp, mouth,
shading, lighting; the same seed gives the identical image) :mod:`stages.generators.warp.render`.

Identities: ``identities.bank = "builtin"`` gives ``builtin-astronaut`` and
``builtin-grace-hopper``. To use your own, make a folder with the photos and an
``identities.csv`` with columns ``identity_id,image,ethnicity,age_band,gender,source,licence``
(``image`` relative to the folder; values as in :mod:`factory.recipe`), set
``identities.bank`` to that folder, and optionally run ``factory identities index FOLDER``
to check every photo up front. A usable photo shows exactly one frontal face (dlib's HOG
detector finds it), at least ~60 px between the eyes.

Absolute labels: the planned expression is *added to* the photo's own, so a photo that
smiles shows its smile in every render. Its own AUs are folded in rather than hidden: the
exemplar's own intensities (the bank row's ``expression``, e.g. the builtin astronaut's
``AU12=3 AU25=5``; when not recorded, measured once in population mode,
:func:`stages.detectors.population.own_expression`) are the floor of every label, and the
render moves the landmarks by ``label - own`` only, so the face shows the label. The planner
already folds recorded expressions into the plan (and turns an emotion whose prototype lacks
them into ``mixed``), so plan, labels, emotion and description agree; the exemplar-relative
detectors add the same own AUs to what they measure. Limits: an expression can only be
added to, never removed (a smiling photo never gives a neutral or a sad face; neutral
photos are what a bank should hold, which is what ``dataset.kind = "identity-bank"`` builds),
population mode measures only AUs 4, 12, 15, 25 and 26, and its bands were set on a handful
of faces. ``non_neutral_identity = "reject"`` refuses photos that are not neutral instead
(then ``on_bad_identity`` applies).

Unusable identity photos (unreadable, no face, several faces): with the default
``on_bad_identity = "error"`` the stage raises :class:`StageError` naming the identity and
the file, since a bad bank is a setup problem; with ``"drop"`` each affected record is
dropped with that reason and the run goes on.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from manifests.bank import IdentityBankError, format_expression
from manifests.vocab import DISFA_AUS, INTENSITY_MAX
from stages.base import Record, StageConfig, StageContext, StageError
from stages.catalogue import DLIB_68_LICENCE, DLIB_HOG_LICENCE, THIS_CODE
from stages.detectors.population import own_expression
from stages.faces.exemplar import ExemplarError, exemplar_face
from stages.faces.landmarks import dlib_model_files, load_models
from stages.generators.base import GeneratorStage, planned_labels
from stages.generators.warp.mesh import IdentityGeometry, identity_geometry
from stages.generators.warp.render import render_expression

_log = logging.getLogger(__name__)

__all__ = ["WarpConfig", "WarpGenerator"]


class WarpConfig(StageConfig):
    jitter: float = Field(
        1.0,
        ge=0.0,
        le=3.0,
        description="scale of the seeded roll/scale/shift/lighting jitter; 0 renders every seed the same",
    )
    mouth_interior: bool = Field(True, description="paint a mouth cavity where the lips part")
    teeth: bool = Field(True, description="a hint of upper teeth inside the cavity")
    appearance_cues: bool = Field(True, description="wrinkle/furrow shading (AU1/2/4/6/9/12/15/17/20)")
    cue_strength: float = Field(1.0, ge=0.0, le=3.0, description="multiplies the shading darkness")
    crop_scale: float = Field(4.2, ge=2.5, le=10.0, description="output side in inter-ocular distances")
    image_size: int | None = Field(None, ge=32, le=2048, description="default: output.image_size")
    on_bad_identity: Literal["error", "drop"] = "error"
    non_neutral_identity: Literal["fold", "reject"] = Field(
        "fold",
        description="a photo that is not neutral: fold its own AUs into the labels, or treat it as "
        "unusable (then on_bad_identity applies)",
    )
    identity_cache: int = Field(256, ge=1, le=100_000, description="identities kept prepared per worker")


def _validate_plan(record: Record) -> list[int] | str:
    """The planned 12-vector as ints 0-5, or the reason it is unusable."""
    planned: Any = record.get("planned_intensity")
    try:
        values = [int(v) for v in planned]
    except (TypeError, ValueError):
        return f"planned_intensity {planned!r} is not a list of {len(DISFA_AUS)} integers"
    if len(values) != len(DISFA_AUS) or any(not 0 <= v <= INTENSITY_MAX for v in values):
        return f"planned_intensity {values} must be {len(DISFA_AUS)} integers in 0-{INTENSITY_MAX}"
    return values


class WarpGenerator(GeneratorStage[WarpConfig]):
    name = "warp"
    reads = frozenset({"planned_intensity", "identity_id", "seed"})
    # The generator finds the identity photo's landmarks with dlib (HOG + 68 points) and warps
    # them: the 68-point model shapes every image. Builtin identities are public-domain photos.
    licence = f"{THIS_CODE}; {DLIB_HOG_LICENCE}; {DLIB_68_LICENCE}; identity photos: the bank's licence column"

    def __init__(self, config: WarpConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self._geometry: OrderedDict[str, IdentityGeometry] = OrderedDict()
        self._unusable: dict[str, str] = {}

    def model_files(self) -> dict[str, Path]:
        return {**super().model_files(), **dlib_model_files("pose68")}

    def setup(self) -> None:
        if self.context.identity_bank is None:
            raise StageError(
                "the 'warp' generator needs an identity bank; set identities.bank to "
                "'builtin' or to a folder with identities.csv"
            )
        try:
            load_models()  # load dlib's models now, not inside the first batch
        except RuntimeError as exc:
            raise StageError(str(exc)) from exc

    def _identity_file(self, identity_id: str) -> str:
        bank = self.context.identity_bank
        rec = bank.get(identity_id)
        root = getattr(bank, "root", None)
        return rec.image if root is None or rec.image.startswith("pkg:") else str(root / rec.image)

    def geometry(self, identity_id: str) -> IdentityGeometry:
        """The cached geometry of an identity; :class:`StageError` if its photo is unusable.

        Up to ``identity_cache`` identities are kept (least recently used goes first; each
        holds its photo). Unusable identities are remembered so their photo is not
        re-examined for every record.
        """
        cached = self._geometry.get(identity_id)
        if cached is not None:
            self._geometry.move_to_end(identity_id)
            return cached
        if identity_id in self._unusable:
            raise StageError(self._unusable[identity_id])
        try:
            geom = self._load(identity_id)
        except StageError as exc:
            self._unusable[identity_id] = str(exc)
            raise
        self._geometry[identity_id] = geom
        while len(self._geometry) > self.config.identity_cache:
            self._geometry.popitem(last=False)
        return geom

    def _load(self, identity_id: str) -> IdentityGeometry:
        bank = self.context.identity_bank
        try:
            path = self._identity_file(identity_id)
            image = np.asarray(bank.image(identity_id))
        except IdentityBankError as exc:
            raise StageError(f"warp: identity {identity_id!r}: {exc}") from exc
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise StageError(f"warp: identity {identity_id!r} ({path}) is not an RGB image")
        try:
            face = exemplar_face(image)
        except ExemplarError as exc:
            raise StageError(
                f"warp: identity {identity_id!r} photo {path} is unusable: {exc.reason}; "
                "replace the photo with a single frontal face or remove the identity "
                "(check a bank with: factory identities index FOLDER)"
            ) from exc
        own = self._own_expression(identity_id, path, face.landmarks)
        if any(own) and self.config.non_neutral_identity == "reject":
            raise StageError(
                f"warp: identity {identity_id!r} photo {path} is not neutral "
                f"({format_expression(own)}; non_neutral_identity = 'reject')"
            )
        return identity_geometry(identity_id, image, face.landmarks, own=own)

    def _own_expression(self, identity_id: str, path: str, landmarks: np.ndarray) -> tuple[int, ...]:
        """The photo's own AUs: recorded in the bank, else measured (and logged once)."""
        recorded = self.context.identity_bank.get(identity_id).own_intensity()
        if recorded is not None:
            return recorded
        own = own_expression(landmarks)
        if any(own):
            _log.warning(
                "warp: identity %r (%s) reads %s in population mode; folded into its labels "
                "(record it as the bank row's expression)",
                identity_id,
                path,
                format_expression(own),
            )
        return own

    def run_record(self, record: Record) -> str | None:
        planned = _validate_plan(record)
        if isinstance(planned, str):
            return planned
        try:
            geom = self.geometry(record["identity_id"])
        except StageError as exc:
            if self.config.on_bad_identity == "error":
                raise
            return str(exc)
        size = self.config.image_size or self.context.image_size
        # The photo already shows its own AUs: render only what the label adds to them.
        label = [max(p, o) for p, o in zip(planned, geom.own, strict=True)]
        added = [lv - o for lv, o in zip(label, geom.own, strict=True)]
        image, _ = render_expression(geom, added, size, int(record["seed"]), self.config)
        self.write_sample(record, image, "exact", *planned_labels(label))
        return None
