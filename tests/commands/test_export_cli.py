from __future__ import annotations

import pytest

from factory.cli.export import parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [("1GB", 10**9), ("500MB", 5 * 10**8), ("512MiB", 512 * 2**20), ("1.5 GiB", int(1.5 * 2**30)), ("4096", 4096)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "1XB", "-1GB", ""])
def test_parse_size_names_the_option(text: str) -> None:
    with pytest.raises(ValueError, match="--shard-bytes"):
        parse_size(text)
