"""The LLM reply cache: one SQLite file per dataset, on the local disk of the node that asks.

The file is ``llm.sqlite`` in ``manifests.store.node_cache_dir(run_dir, "llm")`` (under
``$MIFA_CACHE_DIR``, else the XDG cache folder, keyed by the dataset's absolute path or URL),
never inside the dataset: SQLite's WAL journal is not safe on a shared filesystem (NFS), and an
object store has no files at all. Replies are keyed by :func:`stages.prompt.llm.cache_key`
(settings, request and feedback history), so a rerun or a resumed build on the same node sends
no request twice; WAL journaling lets the processes of that node share the file.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from manifests.store import node_cache_dir

__all__ = ["RequestCache", "cache_file"]


def cache_file(run_dir: Path) -> Path:
    """Where the reply cache of the dataset at ``run_dir`` lives on this node."""
    return node_cache_dir(run_dir, "llm") / "llm.sqlite"


class RequestCache:
    """Persistent reply cache (SQLite, WAL so several workers can share one run directory)."""

    def __init__(self, path: Path, template: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.template = template  # the prompt template version each reply is stored with
        self._db = sqlite3.connect(path, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT, template TEXT, "
            "content TEXT NOT NULL, created REAL)"
        )
        self._db.commit()

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT content FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, model: str, content: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?)",
            (key, model, self.template, content, time.time()),
        )
        self._db.commit()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        self._db.close()
