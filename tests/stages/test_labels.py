"""The one Jaccard the prompt read-back and the filters share."""

from __future__ import annotations

import pytest

from stages.labels import jaccard


def test_jaccard_edge_cases() -> None:
    assert jaccard(set(), set()) == 1.0  # a neutral plan read back as neutral agrees completely
    assert jaccard(set(), {12}) == 0.0
    assert jaccard({4}, set()) == 0.0
    assert jaccard({1, 2, 4}, {1, 2, 5}) == pytest.approx(2 / 4)
    assert jaccard({1, 2}, {2, 4}) == pytest.approx(1 / 3)
    assert jaccard({6, 12}, [12, 6]) == 1.0  # any iterables; order and repeats do not count
