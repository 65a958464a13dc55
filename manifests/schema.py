"""Versioned Arrow schema of a shard manifest (one row per planned sample, kept or not).

Vectors of 12 are in ``manifests.vocab.DISFA_AUS`` order. In ``consensus_*`` and ``au_*``
``-1`` means uncertain (no detector consensus); in a detector vote ``null`` means the
detector does not cover that AU.

A sample in flight is a :data:`Record`: a plain ``dict`` whose keys are drawn from
:data:`RECORD_FIELDS`, the manifest columns (typed by :data:`MANIFEST_SCHEMA`) and the
transient fields of :data:`TRANSIENT_FIELDS` (typed there), which live only while a sample is
in flight and are never written as columns. Every field is declared here once: the stages
declare which of them they read and write (``stages.base.Stage.reads`` / ``writes``), a
recipe whose stage chain reads a field no earlier stage writes is refused when it is loaded
(``stages.pipeline.Pipeline.check``), and the shard writer refuses a record key this module
does not know. A record starts as a row of :data:`PLAN_SCHEMA` (:data:`PLAN_KEYS`).

The record stays a ``dict`` at run time (not a dataclass or a pydantic model) because the
stages, the writer and the exports all speak dicts and the declared key set gives the checks
a typed object would. Measured on a 10k-record batch (``python -m bench.bench_record``: plan
rows to records, the stages' writes, the writer's key check and row; best of 7-9, four runs on
a shared 2-core machine under load 4-22), a dict with the declared key set took 208-316 ms, a
slotted dataclass converted at the edges 429-752 ms and a pydantic model 517-1359 ms: two to
five times the dict, for no check the declarations do not make.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

__all__ = [
    "INDEX_COLUMNS",
    "INDEX_SCHEMA",
    "JSON_KEYS",
    "MANIFEST_SCHEMA",
    "N_AUS",
    "PLAN_KEYS",
    "PLAN_SCHEMA",
    "RECORD_FIELDS",
    "SCHEMA_VERSION",
    "SCORE_KEYS",
    "TRANSIENT_FIELDS",
    "TRANSIENT_KEYS",
    "WRITER_COLUMNS",
    "Record",
]

SCHEMA_VERSION = "1.0"
N_AUS = 12

_i8x12 = pa.list_(pa.int8(), N_AUS)
_f32x12 = pa.list_(pa.float32(), N_AUS)

PLAN_FIELDS = [
    pa.field("key", pa.string(), nullable=False),  # "{shard:06d}_{index:05d}", unique
    pa.field("shard", pa.int32(), nullable=False),
    pa.field("index", pa.int32(), nullable=False),  # position inside the shard
    pa.field("seed", pa.int64(), nullable=False),  # per-sample generation seed
    pa.field("emotion", pa.string(), nullable=False),  # one of aus.EMOTIONS, neutral, mixed
    pa.field("planned_intensity", _i8x12, nullable=False),  # 0 = inactive, 1-5 active
    pa.field("identity_id", pa.string(), nullable=False),
    pa.field("ethnicity", pa.string(), nullable=False),
    pa.field("age_band", pa.string(), nullable=False),
    pa.field("gender", pa.string(), nullable=False),
    pa.field("identity_match", pa.string(), nullable=False),  # how well identity fits stratum
]
PLAN_SCHEMA = pa.schema(PLAN_FIELDS, metadata={"mifa_schema_version": SCHEMA_VERSION})

_vote = pa.struct(
    [
        pa.field("detector", pa.string()),
        pa.field("occurrence", _f32x12),  # probability, null where not covered
        pa.field("intensity", _f32x12),  # 0-5, null where not covered
    ]
)

MANIFEST_FIELDS = PLAN_FIELDS + [
    # prompt stage
    pa.field("description", pa.string()),
    pa.field("prompt_backend", pa.string()),
    pa.field("prompt_version", pa.string()),
    pa.field("prompt_jaccard", pa.float32()),  # read-back active set vs planned
    pa.field("prompt_intensity_agreement", pa.float32()),
    pa.field("prompt_note", pa.string()),  # why an LLM text was not used (grammar-fallback)
    # generator stage
    pa.field("generator", pa.string()),
    pa.field("label_source", pa.string()),  # exact | decoded | planned | consensus
    pa.field("generator_occurrence", _f32x12),
    pa.field("generator_intensity", _f32x12),
    # face stage
    pa.field("face_score", pa.float32()),
    pa.field("face_box", pa.list_(pa.float32(), 4)),  # x0, y0, x1, y1 in pixels
    # detectors + agreement
    pa.field("votes", pa.list_(_vote)),
    pa.field("consensus_occurrence", _i8x12),
    pa.field("consensus_intensity", _f32x12),
    pa.field("agreement_score", pa.float32()),
    # final labels (what a user trains on)
    pa.field("au_occurrence", _i8x12),
    pa.field("au_intensity", _i8x12),
    # filters
    pa.field("label_jaccard", pa.float32()),
    pa.field("realism_score", pa.float32()),
    pa.field("realism_scorer", pa.string()),
    pa.field("identity_similarity", pa.float32()),
    pa.field("identity_model", pa.string()),  # "arcface" or "dlib": what identity_similarity embedded with
    # identity-bank builds: the kept portrait's identity embedding (L2-normalised), deduplicated
    # across the bank when the dataset is committed; null in sample builds
    pa.field("identity_embedding", pa.list_(pa.float32())),
    # outcome
    pa.field("accepted", pa.bool_(), nullable=False),
    pa.field("dropped_by", pa.string()),
    pa.field("drop_reason", pa.string()),
    pa.field("image_member", pa.string()),  # member name in the shard tar, null if not stored
    pa.field("image_format", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
]
MANIFEST_SCHEMA = pa.schema(MANIFEST_FIELDS, metadata={"mifa_schema_version": SCHEMA_VERSION})

# The ``{key}.json`` member of a shard tar: these columns, the scores under "scores", and
# ``accepted`` (plus the drop for a kept rejected sample).
SCORE_KEYS: tuple[str, ...] = (
    "agreement_score",
    "label_jaccard",
    "realism_score",
    "identity_similarity",
    "prompt_jaccard",
)
JSON_KEYS: tuple[str, ...] = (
    "key",
    "au_occurrence",
    "au_intensity",
    "description",
    "emotion",
    "identity_id",
    "ethnicity",
    "age_band",
    "gender",
    "label_source",
)

# The dataset index (index.parquet): these manifest columns of the accepted samples, with
# the shard's tar file name added after ``image_member``.
INDEX_COLUMNS = (
    "key",
    "shard",
    "image_member",
    "emotion",
    "identity_id",
    "ethnicity",
    "age_band",
    "gender",
    "label_source",
    "au_occurrence",
    "au_intensity",
    "description",
    "agreement_score",
    "label_jaccard",
    "realism_score",
    "identity_similarity",
    "prompt_jaccard",
)
INDEX_SCHEMA = pa.schema(
    [MANIFEST_SCHEMA.field(c) for c in INDEX_COLUMNS[:3]]
    + [pa.field("tar", pa.string(), nullable=False)]
    + [MANIFEST_SCHEMA.field(c) for c in INDEX_COLUMNS[3:]],
    metadata={"mifa_schema_version": SCHEMA_VERSION},
)

# Record fields that are not columns, with their Python type: they live only while a sample is
# in flight (the writer encodes ``image``; the agreement stage stores ``detector_votes`` as
# ``votes``; the rest is dropped at the writer).
TRANSIENT_FIELDS: dict[str, type] = {
    "image": np.ndarray,  # uint8 RGB (H, W, 3), set by the generator
    "image_bytes": bytes,  # an already encoded image (JPEG, PNG or WebP), stored as is by the writer
    "landmarks": np.ndarray,  # float32 (68, 2) iBUG points in image pixels, set by a 68-point face stage
    "landmarks5": np.ndarray,  # float32 (5, 2) ArcFace-order keypoints in pixels, set by a 5-point face stage
    # {detector name: {"occurrence": [12 x float|None], "intensity": [12 x float|None]}}, by the detectors
    "detector_votes": dict,
    "face_crop": np.ndarray,  # uint8 RGB square aligned face crop, set by the face stage
    "mask": np.ndarray,  # optional per-sample inpainting mask (maugen), (H, W), 1 = generate
    "background": np.ndarray,  # optional per-sample background image (maugen), uint8 RGB
    "head_pose": tuple,  # (yaw, pitch, roll) degrees, portrait-filters
    "face_iod": float,  # inter-ocular distance in pixels, portrait-filters
    "face_sharpness": float,  # variance of the Laplacian of the face crop, portrait-filters
}
TRANSIENT_KEYS: tuple[str, ...] = tuple(TRANSIENT_FIELDS)
# What a record holds before any stage ran: one row of the plan.
PLAN_KEYS = frozenset(PLAN_SCHEMA.names)
# Every key a record may hold.
RECORD_FIELDS = frozenset(MANIFEST_SCHEMA.names) | frozenset(TRANSIENT_FIELDS)
# Columns the shard writer fills itself (from the image it encodes and the drop): no stage writes them.
WRITER_COLUMNS = frozenset({"accepted", "image_member", "image_format", "width", "height"})
# A sample in flight: keys from RECORD_FIELDS, values of the column's or TRANSIENT_FIELDS' type.
Record = dict[str, Any]
