"""Contact sheets: a row of captioned thumbnails per emotion, drawn with Pillow (no plotting needed).

The samples are a seeded draw (``md5(key)`` order within each emotion), read from the
source tars in shard order, one tar open at a time. Each thumbnail is its own JPEG, kept
with its key, so the page prints every key directly under the image it names (a single
strip with a line of keys below it drifted apart once keys were wider than thumbnails).
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from manifests.dataset import DatasetRef
from manifests.export.stream import ShardImages
from manifests.query import connect

__all__ = ["ContactSheet", "contact_sheets"]

ContactSheet = list[tuple[str, bytes]]  # (key, JPEG thumbnail of that key's image), in draw order


def _thumbnail(data: bytes, size: int) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        thumb = image.convert("RGB")
    thumb.thumbnail((size, size))
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def contact_sheets(
    dataset: DatasetRef, run_dir: Path, per_emotion: int = 8, size: int = 128
) -> dict[str, ContactSheet]:
    """Emotion -> up to ``per_emotion`` accepted samples as (key, thumbnail) pairs."""
    con = connect(run_dir)
    try:
        rows = con.execute(
            "SELECT emotion, key, shard, image_member FROM (SELECT emotion, key, shard, index, image_member, "
            "row_number() OVER (PARTITION BY emotion ORDER BY md5(key)) AS draw FROM samples "
            f"WHERE image_member IS NOT NULL) WHERE draw <= {int(per_emotion)} ORDER BY shard, index"
        ).fetchall()
    finally:
        con.close()
    picked: dict[str, ContactSheet] = {}
    reader: ShardImages | None = None
    current = None
    try:
        for emotion, key, shard, member in rows:
            if shard != current:
                if reader is not None:
                    reader.close()
                reader, current = ShardImages(dataset.tar(int(shard))), shard
            assert reader is not None
            picked.setdefault(str(emotion), []).append((str(key), _thumbnail(reader.get(member), size)))
    finally:
        if reader is not None:
            reader.close()
    return dict(sorted(picked.items()))
