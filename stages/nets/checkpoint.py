"""What keeps a state dict from loading into a network, said once for every checkpoint loader.

``torch.nn.Module.load_state_dict(strict=True)`` stops at the first problem with a long
message; the loaders (OpenGraphAU, the learned-realism classifier and its pretrained
backbone, the MAUGen release files) instead check up front and raise their own error that
names the file, with :func:`state_dict_mismatch` saying which keys are missing, unexpected
or mis-shaped. Tensors are only asked for ``.shape``, so this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["state_dict_mismatch"]


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(getattr(value, "shape", ()))


def _first(keys: list[str], n: int, sep: str = ", ") -> str:
    return sep.join(keys[:n]) + (" ..." if len(keys) > n else "")


def state_dict_mismatch(expected: Mapping[str, Any], found: Mapping[str, Any]) -> str:
    """Empty when ``found`` (from a file) fits ``expected`` (the network's own state dict) key
    for key and shape for shape; else the counts and the first few of each problem."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mis_shaped = [
        f"{k} {_shape(found[k])} vs {_shape(v)}"
        for k, v in expected.items()
        if k in found and _shape(found[k]) != _shape(v)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {_first(missing, 5)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {_first(unexpected, 5)})")
    if mis_shaped:
        parts.append(f"{len(mis_shaped)} mis-shaped keys, file vs model (first: {_first(mis_shaped, 3, '; ')})")
    return "; ".join(parts)
