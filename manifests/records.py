"""Record serialisation: a sample record -> its tar members and its manifest row.

A record is the plain dict the stages fill (``manifests.schema.Record``); this module turns one
into the ``{key}.json`` label member, the encoded image member, and a row of the
Parquet manifest, and a shard's rows into an Arrow table with ``MANIFEST_SCHEMA``.
"""

from __future__ import annotations

import io
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa
from PIL import Image

from manifests.schema import JSON_KEYS, MANIFEST_SCHEMA, SCORE_KEYS

__all__ = [
    "JSON_KEYS",
    "REQUIRED_KEYS",
    "SCORE_KEYS",
    "ImageFormat",
    "encode_image",
    "encoded_size",
    "image_format_of",
    "json_default",
    "manifest_row",
    "manifest_table",
    "sample_json",
    "unknown_keys_message",
    "votes_column",
]

ImageFormat = Literal["jpg", "webp", "png"]
PIL_FORMATS = {"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}
# Columns a record must carry (non-nullable in the schema); shard and index are filled in.
REQUIRED_KEYS = tuple(
    f.name for f in MANIFEST_SCHEMA if not f.nullable and f.name not in ("shard", "index", "accepted")
)
_NAMES = tuple(MANIFEST_SCHEMA.names)
_POS = {name: i for i, name in enumerate(_NAMES)}


def json_default(value: Any) -> Any:
    """``json.dumps`` hook for numpy values inside records."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def unknown_keys_message(record: dict[str, Any], unknown: set[str]) -> str:
    """Why a record holding keys no schema column or transient field knows cannot be written."""
    stage = record.get("dropped_by")
    by = f" (the sample was dropped by stage {stage!r})" if stage else ""
    return (
        f"sample {record.get('key')}: record field(s) {sorted(unknown)} are neither manifest columns nor "
        f"transient fields of manifests.schema{by}; a stage wrote a key it does not declare: fix its spelling, "
        "or declare the field in manifests.schema and in the stage's `writes`"
    )


def _score(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if value != value else value  # NaN (not valid JSON) -> null


def sample_json(record: dict[str, Any], accepted: bool) -> bytes:
    """The ``{key}.json`` member: labels, metadata and quality scores of one sample."""
    doc = {k: record.get(k) for k in JSON_KEYS}
    doc["scores"] = {k: _score(record.get(k)) for k in SCORE_KEYS}
    doc["accepted"] = accepted
    if not accepted:
        doc["dropped_by"] = record.get("dropped_by")
        doc["drop_reason"] = record.get("drop_reason")
    # orjson writes numpy vectors natively (several times faster than json + a default hook,
    # which the shard writer's throughput target noticed); json_default covers the rest
    # (non-contiguous arrays, numpy scalars nested in lists).
    return orjson.dumps(doc, default=json_default, option=orjson.OPT_SERIALIZE_NUMPY)


def votes_column(detector_votes: dict[str, Any]) -> list[dict[str, Any]]:
    """``record["detector_votes"]`` (name -> occurrence/intensity) -> a ``votes`` value.

    Vectors stay as given; NaN becomes null when the column is built (detectors often use
    NaN for "AU not covered", which the schema spells null).
    """
    return [
        {
            "detector": name,
            "occurrence": vote.get("occurrence"),
            "intensity": vote.get("intensity"),
        }
        for name, vote in detector_votes.items()
    ]


def image_format_of(data: bytes) -> ImageFormat | None:
    """Sniff the container of encoded image bytes."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def encode_image(image: Any, image_format: ImageFormat, quality: int, key: str) -> bytes:
    """uint8 RGB ``(H, W, 3)`` array -> encoded bytes (Pillow, libjpeg-turbo / libwebp)."""
    is_rgb = isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
    if not (is_rgb and image.dtype == np.uint8):
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise ValueError(f"sample {key}: record['image'] must be a uint8 RGB array (H, W, 3), got {got}")
    buf = io.BytesIO()
    # PNG: level 3 is several times faster than Pillow's default 6 for a few % more bytes.
    lossy = image_format in ("jpg", "webp")
    options: dict[str, Any] = {"quality": quality} if lossy else {"compress_level": 3}
    Image.fromarray(image, "RGB").save(buf, format=PIL_FORMATS[image_format], **options)
    return buf.getvalue()


def encoded_size(data: bytes) -> tuple[int, int]:
    """(width, height) of encoded image bytes, from the header only."""
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def manifest_row(
    record: dict[str, Any],
    *,
    key: str,
    accepted: bool,
    member: str | None,
    image_format: str | None,
    width: Any,
    height: Any,
    shard: int,
    index: int,
) -> list[Any]:
    """One manifest row in ``MANIFEST_SCHEMA`` order.

    Values go in as they are (numpy arrays and scalars too): pyarrow converts whole
    columns in :func:`manifest_table`, far faster than converting field by field here.
    """
    row = [record.get(name) for name in _NAMES]
    row[_POS["key"]] = key
    row[_POS["accepted"]] = accepted
    row[_POS["image_member"]] = member
    row[_POS["image_format"]] = image_format
    row[_POS["width"]] = width
    row[_POS["height"]] = height
    if row[_POS["shard"]] is None:
        row[_POS["shard"]] = shard
    if row[_POS["index"]] is None:
        row[_POS["index"]] = index
    if row[_POS["votes"]] is None and record.get("detector_votes") is not None:
        row[_POS["votes"]] = votes_column(record["detector_votes"])
    return row


def manifest_table(rows: list[list[Any]], where: str) -> pa.Table:
    """Rows from :func:`manifest_row` -> an Arrow table; a value that does not fit its column
    raises ``ValueError`` naming ``where``, the sample key and the column."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(_NAMES)
    arrays = []
    for field, values in zip(MANIFEST_SCHEMA, columns, strict=True):
        try:
            # from_pandas: NaN -> null in votes (the schema: null = AU not covered).
            arrays.append(pa.array(values, type=field.type, from_pandas=field.name == "votes"))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            raise ValueError(_bad_value_message(where, field, columns[0], values, exc)) from exc
    return pa.Table.from_arrays(arrays, schema=MANIFEST_SCHEMA)


def _bad_value_message(where: str, field: pa.Field, keys: Any, values: Any, exc: Exception) -> str:
    # Only on the error path: find the first offending row so the message names a key.
    for key, value in zip(keys, values, strict=True):
        try:
            pa.array([value], type=field.type, from_pandas=field.name == "votes")
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            return (
                f"shard {where}: sample {key}: column {field.name!r} = {value!r} "
                f"does not fit {field.type} ({exc}); fix the stage that sets it"
            )
    return f"shard {where}: column {field.name!r} does not fit {field.type} ({exc})"
