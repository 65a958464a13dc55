"""Claiming a folder for one kind of output: it must be new, empty, or ours.

The factory writes three kinds of output folder (a build's run directory, an export, a subset)
and never writes into a folder of someone else's files. :func:`claim_folder` is that one rule,
with a :class:`FolderKind` saying what marks a folder as ours, which leftovers of an interrupted
run of this kind do not make it foreign, and how the refusal is worded (which folder, and the
fix). What a kind then does with its own folder (resume a build, resume or replace an export,
replace a subset with ``--overwrite``) stays with its caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from manifests.store import store_for

__all__ = ["Claim", "FolderKind", "claim_folder"]

Claim = Literal["new", "ours"]  # new: absent or empty (leftovers aside); ours: marked by this kind


def _none_left(name: str) -> bool:
    """The default: no leftover name is ours without the marker."""
    return False


@dataclass(frozen=True)
class FolderKind:
    """One kind of output folder and the words of its refusals."""

    noun: str  # "output folder", "export target", ...
    what: str  # what an own folder is: "a factory build", "a previous export", ...
    marker: str  # the file that makes a folder ours ("run.json", ".mifa-export", ...)
    fix: str  # the advice that ends a refusal (choose another folder, the option to pass)
    error: type[Exception]
    # Names an interrupted run of this kind leaves before it writes its marker.
    leftover: Callable[[str], bool] = field(default=_none_left)
    # A stricter test than the marker's presence (a subset: an index.json that opens as a subset).
    is_ours: Callable[[Any], bool] | None = None
    # Refused on object storage, with this advice (a format that writes through local files).
    local_only: str | None = None


def claim_folder(folder: Any, kind: FolderKind) -> Claim:
    """Check that ``folder`` may hold ``kind``'s output: ``"new"`` when it does not exist or
    holds nothing but ``kind``'s leftovers, ``"ours"`` when ``kind``'s marker is there. A file,
    an unreadable folder, or a folder holding anything else raises ``kind.error`` naming the
    folder, what is in it and the fix; nothing is created or removed here."""
    if kind.local_only is not None and not store_for(folder).local:
        raise kind.error(f"{kind.noun} {folder} is on object storage; {kind.local_only}")
    if folder.exists() and not folder.is_dir():
        raise kind.error(f"{kind.noun} {folder} is a file, not a folder; {kind.fix}")
    if not folder.is_dir():
        return "new"
    marker = folder / kind.marker
    if marker.exists() and (kind.is_ours is None or kind.is_ours(folder)):
        return "ours"
    try:
        foreign = sorted(p.name for p in folder.iterdir() if not kind.leftover(p.name))
    except OSError as exc:
        raise kind.error(f"cannot read the {kind.noun} {folder} ({exc.strerror or exc}); {kind.fix}") from None
    if not foreign:
        return "new"
    shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    raise kind.error(
        f"{kind.noun} {folder} is not empty and is not {kind.what} (no {kind.marker}; it holds {shown}); {kind.fix}"
    )
