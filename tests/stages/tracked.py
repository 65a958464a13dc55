"""A record that notes what a stage reads and sets, for the registry-wide contract test."""

from __future__ import annotations

import pickle
from typing import Any

from stages.base import Record


class TrackedRecord(dict[str, Any]):
    """A record that notes which fields a stage reads before it sets them itself."""

    def __init__(self, fields: Record) -> None:
        super().__init__(fields)
        self.read_first: set[str] = set()  # read while still holding what came in
        self.set_here: set[str] = set()

    def _note(self, name: str) -> None:
        if name not in self.set_here:
            self.read_first.add(name)

    def __getitem__(self, name: str) -> Any:
        self._note(name)
        return super().__getitem__(name)

    def get(self, name: str, default: Any = None) -> Any:
        self._note(name)
        return super().get(name, default)

    def __contains__(self, name: object) -> bool:
        self._note(str(name))
        return super().__contains__(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set_here.add(name)
        super().__setitem__(name, value)

    def setdefault(self, name: str, default: Any = None) -> Any:
        self._note(name)
        self.set_here.add(name)
        return super().setdefault(name, default)

    def update(self, *args: Any, **fields: Any) -> None:
        new = dict(*args, **fields)
        self.set_here.update(new)
        super().update(new)


def snapshot(record: Record) -> dict[str, bytes]:
    return {name: pickle.dumps(value) for name, value in record.items()}


def changed_fields(before: dict[str, bytes], record: Record) -> set[str]:
    """Fields added, replaced or changed in place since ``before``."""
    return {name for name, value in record.items() if before.get(name) != pickle.dumps(value)}
