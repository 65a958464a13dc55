"""Contact sheets: a strip of thumbnails per emotion, drawn with Pillow (no plotting needed).

The samples are a seeded draw (``md5(key)`` order within each emotion), read from the
source tars in shard order, one tar open at a time.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from manifests.dataset import DatasetRef
from manifests.export.stream import ShardImages
from manifests.query import connect

__all__ = ["ContactSheet", "contact_sheets"]

ContactSheet = tuple[bytes, list[str]]  # (JPEG bytes of the strip, keys left to right)


def _strip(images: list[bytes], size: int) -> bytes:
    sheet = Image.new("RGB", (size * len(images) + 4 * (len(images) + 1), size + 8), "white")
    for k, data in enumerate(images):
        with Image.open(io.BytesIO(data)) as image:
            thumb = image.convert("RGB")
            thumb.thumbnail((size, size))
            sheet.paste(thumb, (4 + k * (size + 4), 4))
    buffer = io.BytesIO()
    sheet.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def contact_sheets(
    dataset: DatasetRef, run_dir: Path, per_emotion: int = 8, size: int = 128
) -> dict[str, ContactSheet]:
    """Emotion -> (strip of up to ``per_emotion`` accepted samples, their keys)."""
    con = connect(run_dir)
    try:
        rows = con.execute(
            "SELECT emotion, key, shard, image_member FROM (SELECT emotion, key, shard, index, image_member, "
            "row_number() OVER (PARTITION BY emotion ORDER BY md5(key)) AS draw FROM samples "
            f"WHERE image_member IS NOT NULL) WHERE draw <= {int(per_emotion)} ORDER BY shard, index"
        ).fetchall()
    finally:
        con.close()
    picked: dict[str, list[tuple[str, bytes]]] = {}
    reader: ShardImages | None = None
    current = None
    try:
        for emotion, key, shard, member in rows:
            if shard != current:
                if reader is not None:
                    reader.close()
                reader, current = ShardImages(dataset.tar(int(shard))), shard
            assert reader is not None
            picked.setdefault(str(emotion), []).append((str(key), reader.get(member)))
    finally:
        if reader is not None:
            reader.close()
    return {
        emotion: (_strip([data for _, data in items], size), [key for key, _ in items])
        for emotion, items in sorted(picked.items())
    }
