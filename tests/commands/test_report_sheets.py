"""The report's contact sheets print each key under the image of that key."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from factory.commands.report import render_report
from manifests.index import write_index
from manifests.writer import ShardWriter
from tests.manifests import make_record


def _colour(shard: int, index: int) -> tuple[int, int, int]:
    """A colour that names the sample: far apart per key, so JPEG cannot blur one into another."""
    return (40 + 60 * shard, 20 + 30 * index, 200 - 30 * index)


def test_each_contact_sheet_key_is_the_key_of_the_image_above_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    expected: dict[str, tuple[int, int, int]] = {}
    for shard in range(2):
        with ShardWriter(tmp_path / "shards", "mifa", shard) as writer:
            for index in range(6):
                record = make_record(shard, index, rng)
                # Two emotions, so a sheet holds keys of both shards in an order of its own.
                record.update(emotion=("happiness", "sadness")[index % 2])
                record["image"] = np.full((64, 64, 3), _colour(shard, index), np.uint8)
                expected[record["key"]] = _colour(shard, index)
                writer.add(record)
            writer.commit({"attempt": 1})
    write_index(tmp_path, "mifa", [0, 1], target=12, surplus=[], failed={})

    page = render_report(tmp_path, per_emotion=4)

    sheets = page.split('id="contact-sheets"', 1)[1]
    figures = re.findall(
        r'<figure><img class="thumb" alt="([^"]+)" src="data:image/jpeg;base64,([^"]+)">'
        r"<figcaption>([^<]+)</figcaption></figure>",
        sheets,
    )
    assert len(figures) == 8  # four per emotion
    for alt, encoded, caption in figures:
        assert alt == caption
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as thumb:
            mean = np.asarray(thumb.convert("RGB"), float).reshape(-1, 3).mean(axis=0)
        nearest = min(expected, key=lambda key: float(np.abs(mean - expected[key]).sum()))
        assert nearest == caption, f"the image above {caption} is {nearest}'s"
        assert np.abs(mean - expected[caption]).max() < 6
