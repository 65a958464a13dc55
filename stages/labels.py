"""Label arithmetic shared by stages of different kinds (prompt read-back, filters).

Kept below every kind (beside ``nets`` and ``catalogue``) so that sibling kinds, which may
not import each other, share one definition.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["jaccard"]


def jaccard(a: Iterable[int], b: Iterable[int]) -> float:
    """|a & b| / |a | b| of two AU sets; 1.0 for two empty sets (they agree completely),
    0.0 for one empty and one non-empty set."""
    sa, sb = set(a), set(b)
    union = sa | sb
    if not union:
        return 1.0
    return len(sa & sb) / len(union)
