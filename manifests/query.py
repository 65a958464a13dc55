"""SQL over a built dataset with DuckDB.

The view ``samples`` holds the manifests of the indexed shards: every manifest column of
``manifests.schema.MANIFEST_SCHEMA``, accepted samples only unless ``include_rejected``.
For a subset (``factory filter``) it holds exactly the subset's samples, read from the
source's manifests (a subset's selection already decided about rejected samples). In an
identity bank a portrait that duplicates an earlier identity is not accepted, and the view
adds ``duplicate_of`` and ``duplicate_similarity``.

DuckDB lists are **1-based**: ``au_occurrence[1]`` is AU1, ``au_occurrence[7]`` is AU12
(vectors are in ``manifests.vocab.DISFA_AUS`` order). Rather than counting, use the macro
``au(n)``, the 1-based position of AU ``n`` (NULL for an AU MIFA does not label)::

    SELECT key, au_intensity[au(12)] AS smile FROM samples WHERE au_occurrence[au(12)] = 1

DuckDB binds a macro's body when it is created, so no macro can read a column of the
query implicitly. The shorthands ``au_occ(N)`` and ``au_int(N)`` (``N`` a literal AU number)
are therefore expanded before DuckDB sees the SQL, by :func:`expand_au_shorthand`::

    au_occ(12) = 1 AND au_int(6) >= 3   ->   au_occurrence[7] = 1 AND au_intensity[5] >= 3

An AU MIFA does not label is an error there, naming the labelled ones. In Python,
:func:`au_filter` builds the same conditions (``au_filter(12) == "au_occ(12) = 1"``).

``drop_code(drop_reason)`` is the stable code of a drop reason (:func:`drop_code`: its values
masked as ``#``), the one the card and report group by, so one rule's drops are one row::

    SELECT drop_code(drop_reason) AS drop_code, count(*) FROM samples WHERE NOT accepted GROUP BY drop_code

Queries are read-only. A user's SQL is exactly one SELECT statement (``WITH``, ``DESCRIBE``,
``SUMMARIZE`` and ``FROM ...`` parse as one), checked by DuckDB's own parser
(:func:`check_read_only`); a ``--where`` is checked as the statement it becomes
(:func:`check_where`). Every connection :func:`connect` returns is locked once its views exist:
no file outside the dataset (and the folders the caller names as writable) can be read or
written, no extension installed or loaded, and no setting changed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa

from manifests.dataset import open_dataset, read_index
from manifests.errors import UserError
from manifests.schema import MANIFEST_SCHEMA
from manifests.store import register_duckdb
from manifests.vocab import AU_INDEX, DISFA_AUS, INTENSITY_LEVELS

__all__ = [
    "QueryError",
    "au_filter",
    "au_occurrence_counts",
    "check_read_only",
    "check_where",
    "connect",
    "drop_code",
    "drop_reasons",
    "expand_au_shorthand",
    "intensity_histograms",
    "query",
    "sql_string",
    "summary",
    "user_sql",
    "with_dedup",
]

_AU_LIST = "[" + ", ".join(str(a) for a in DISFA_AUS) + "]"
MACROS = (
    # 1-based position of AU n in the label vectors (NULL if MIFA does not label it).
    f"CREATE MACRO au(n) AS list_position({_AU_LIST}, n)",
)


# The values inside a drop reason (numbers, quoted names, lists): masked, one rule's drops are one code.
_REASON_VALUES = re.compile(r"'[^']*'|\"[^\"]*\"|\[[^\]]*\]|\(-?\d[^)]*\)|-?\d+(?:\.\d+)?(?:e-?\d+)?")


def drop_code(reason: str) -> str:
    """The stable code of a drop reason: its text with the values in it masked as ``#``, so
    "jaccard 0.33 < 0.5" and "jaccard 0.25 < 0.5" are one code (the manifest keeps the value).
    SQL over ``samples`` has it as the function ``drop_code(drop_reason)``."""
    return " ".join(_REASON_VALUES.sub("#", reason).split())[:200]


class QueryError(UserError, ValueError):
    """SQL (or a ``--where``) the user wrote that DuckDB refuses, or an AU shorthand naming an
    AU MIFA does not label. DuckDB's message points under the faulty word on lines of its own."""

    multiline = True


class ReadOnlyError(QueryError):
    """SQL that is not one read-only statement, or that reaches outside the dataset."""

    multiline = False


# DuckDB's errors about the SQL itself: syntax, unknown names, types and values that do not fit.
_SQL_ERRORS = (duckdb.ProgrammingError, duckdb.DataError)
_READ_ONLY_FIX = "queries are read-only: one SELECT / WITH / DESCRIBE / SUMMARIZE statement over `samples`"
_UNKNOWN_COLUMN = re.compile(r'Referenced column "([^"]+)" not found')


@contextmanager
def user_sql() -> Iterator[None]:
    """Run SQL that holds a user's query or filter: DuckDB's refusal of it is a :class:`QueryError`
    (an unknown column names the columns there are; reaching outside the dataset is refused)."""
    try:
        yield
    except duckdb.PermissionException as exc:
        raise ReadOnlyError(f"{_READ_ONLY_FIX}; it may read only the dataset's own files ({_first_line(exc)})") from exc
    except _SQL_ERRORS as exc:
        unknown = _UNKNOWN_COLUMN.search(str(exc))
        if isinstance(exc, duckdb.BinderException) and unknown:
            columns = ", ".join(MANIFEST_SCHEMA.names)
            raise QueryError(f"no column {unknown.group(1)!r} in samples; columns: {columns}") from exc
        raise QueryError(f"query failed: {exc}") from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _statement_kinds(sql: str) -> list[str]:
    con = duckdb.connect()
    try:
        with user_sql():
            return [s.type.name for s in con.extract_statements(sql)]
    finally:
        con.close()


def _refuse_unless_one_select(kinds: list[str]) -> None:
    if kinds != ["SELECT"]:
        found = "no statement" if not kinds else (f"{len(kinds)} statements" if len(kinds) > 1 else kinds[0])
        raise ReadOnlyError(f"{_READ_ONLY_FIX}, got {found}")


def check_read_only(sql: str) -> None:
    """Refuse ``sql`` unless DuckDB parses it as exactly one SELECT statement (a ``COPY``,
    ``ATTACH``, ``INSTALL``, ``DROP``, ``PRAGMA``, ``SET``, ``CALL`` or a second statement is not)."""
    _refuse_unless_one_select(_statement_kinds(sql))


def check_where(where: str) -> None:
    """Refuse a ``--where`` that does not make exactly one SELECT over ``samples``, as it is
    written (``1=1; COPY ...``) and as the commands enclose it in parentheses."""
    try:
        bare = _statement_kinds(f"SELECT * FROM samples WHERE {where}")
    except QueryError:
        bare = ["SELECT"]  # not SQL on its own; the enclosed form below decides
    _refuse_unless_one_select(bare)
    check_read_only(f"SELECT * FROM samples WHERE ({where})")


def _spellings(folder: object) -> list[str]:
    """``folder`` as DuckDB compares it with ``allowed_directories``: a local path absolute; a
    URL both as written and as an fsspec filesystem may hand it back (``proto:///rest``)."""
    text = str(folder)
    if "://" not in text:
        return [os.path.abspath(text)]
    protocol, rest = text.split("://", 1)
    return [text, f"{protocol}:///{rest.lstrip('/')}"]


def _lock(con: Any, allowed: list[str]) -> None:
    """No file but those under ``allowed``, no extension, no further setting: the SQL that
    runs next (a user's) can only read the dataset."""
    listing = "[" + ", ".join(sql_string(a.rstrip("/") + "/") for a in allowed) + "]"
    con.execute(f"SET allowed_directories = {listing}")
    for setting in ("autoinstall_known_extensions", "autoload_known_extensions", "allow_community_extensions"):
        con.execute(f"SET {setting} = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal (quotes doubled)."""
    return "'" + text.replace("'", "''") + "'"


def with_dedup(manifests: str, dedup_files: list[Path]) -> str:
    """An identity bank's manifests with its near-duplicates (``manifests.dedup``) no longer
    accepted, and their partner and similarity as ``duplicate_of`` / ``duplicate_similarity``."""
    if not dedup_files:
        return manifests
    listing = "[" + ", ".join(sql_string(str(f)) for f in dedup_files) + "]"
    return (
        "(SELECT m.* REPLACE (m.accepted AND d.duplicate_of IS NULL AS accepted), d.duplicate_of, "
        f"d.similarity AS duplicate_similarity FROM {manifests} m "
        f"LEFT JOIN read_parquet({listing}) d USING (key))"
    )


def with_balance(manifests: str, balance_files: list[Path]) -> str:
    """A balanced build's manifests with its surplus (``manifests.balance``: accepted samples the
    index leaves out) no longer accepted, ``dropped_by = 'balance'`` and the full cell as reason."""
    if not balance_files:
        return manifests
    listing = "[" + ", ".join(sql_string(str(f)) for f in balance_files) + "]"
    return (
        "(SELECT m.* REPLACE (m.accepted AND b.dropped_by IS NULL AS accepted, "
        "coalesce(m.dropped_by, b.dropped_by) AS dropped_by, coalesce(m.drop_reason, b.reason) AS drop_reason) "
        f"FROM {manifests} m LEFT JOIN read_parquet({listing}) b USING (key))"
    )


def connect(
    run_dir: Path,
    *,
    include_rejected: bool = False,
    include_surplus: bool = False,
    memory_limit: str | None = None,
    spill_dir: Path | None = None,
    writable: tuple[Path, ...] = (),
) -> Any:
    """An in-memory DuckDB connection with the ``samples`` view and the ``au(n)`` macro, locked
    (module docstring): it reads and writes only the dataset, ``spill_dir`` and ``writable``.

    ``include_surplus``: a balanced build's surplus counts as accepted, as it was before the
    balance selection held it back. ``memory_limit`` (e.g. ``"512MB"``) caps DuckDB's own
    memory; sorts and joins beyond it spill to ``spill_dir`` (the tools that must stay flat at a million rows set both).
    """
    dataset = open_dataset(run_dir)
    files = dataset.manifests()
    con = duckdb.connect()
    register_duckdb(con, dataset.root, dataset.shards_dir)
    con.execute("SET enable_progress_bar = false")  # commands draw their own progress
    if memory_limit is not None:
        con.execute(f"SET memory_limit = {sql_string(memory_limit)}")
    if spill_dir is not None:
        con.execute(f"SET temp_directory = {sql_string(str(spill_dir))}")
    if files:
        listing = "[" + ", ".join(sql_string(str(f)) for f in files) + "]"
        source = with_dedup(f"read_parquet({listing})", dataset.dedup_files())
        chosen = (dataset.subset or {}).get("selection", {}).get("include_surplus", False)
        if not (include_surplus or chosen):  # a balanced build's surplus is not the dataset's, unless asked for
            source = with_balance(source, dataset.balance_files())
    else:
        # An index of zero shards is valid (target reached by nothing yet): an empty view.
        con.register("_empty_manifest", MANIFEST_SCHEMA.empty_table())
        source = "_empty_manifest"
    keys = dataset.subset_keys
    if keys is not None:
        where = f" WHERE key IN (SELECT key FROM read_parquet({sql_string(str(keys))}))"
    else:
        where = "" if include_rejected else " WHERE accepted"
    con.execute(f"CREATE VIEW samples AS SELECT * FROM {source}{where}")
    for macro in MACROS:
        con.execute(macro)
    # The same Python function as the card's and report's funnel, so SQL groups by the same codes.
    con.create_function("drop_code", drop_code, [duckdb.sqltype("VARCHAR")], duckdb.sqltype("VARCHAR"))
    folders = [dataset.root, dataset.shards_dir, *([spill_dir] if spill_dir else []), *writable]
    _lock(con, [spelling for f in folders for spelling in _spellings(f)])
    return con


_SHORTHAND = re.compile(r"\bau_(occ|int)\(\s*(\d+)\s*\)", re.IGNORECASE)
_SHORTHAND_COLUMN = {"occ": "au_occurrence", "int": "au_intensity"}


def _position(au: int) -> int:
    if au not in AU_INDEX:
        raise QueryError(f"AU {au} is not labelled by MIFA; labelled AUs: {list(DISFA_AUS)}")
    return AU_INDEX[au] + 1  # DuckDB lists are 1-based


def expand_au_shorthand(sql: str) -> str:
    """``au_occ(N)`` / ``au_int(N)`` -> ``au_occurrence[pos]`` / ``au_intensity[pos]``."""

    def replace(match: re.Match[str]) -> str:
        return f"{_SHORTHAND_COLUMN[match.group(1).lower()]}[{_position(int(match.group(2)))}]"

    return _SHORTHAND.sub(replace, sql)


def au_filter(au: int, value: int = 1, kind: Literal["occ", "int"] = "occ") -> str:
    """SQL condition ``au_occ({au}) = {value}`` (or ``au_int``); raises for an unlabelled AU."""
    _position(au)
    return f"au_{kind}({au}) = {int(value)}"


def query(run_dir: Path, sql: str | None = None, where: str | None = None, include_rejected: bool = False) -> pa.Table:
    """Run ``sql`` (or ``SELECT * FROM samples WHERE {where}``) and return an Arrow table."""
    if sql is not None and where is not None:
        raise QueryError("pass either sql (a full query) or where (a filter on samples), not both")
    if sql is None:
        if where:
            check_where(where)
        sql = "SELECT * FROM samples" + (f" WHERE ({where})" if where else "")
    sql = expand_au_shorthand(sql)
    check_read_only(sql)
    con = connect(run_dir, include_rejected=include_rejected)
    try:
        with user_sql():
            return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def au_occurrence_counts(con: Any, relation: str = "samples") -> dict[int, dict[str, int]]:
    """AU -> counts of present (1), absent (0) and uncertain (-1) labels in ``relation``."""
    rows = con.execute(
        f"""
        SELECT i, count(*) FILTER (WHERE au_occurrence[i] = 1),
               count(*) FILTER (WHERE au_occurrence[i] = 0),
               count(*) FILTER (WHERE au_occurrence[i] = -1)
        FROM {relation}, range(1, 13) AS t(i) GROUP BY i ORDER BY i
        """
    ).fetchall()
    out = {au: {"present": 0, "absent": 0, "uncertain": 0} for au in DISFA_AUS}
    for i, present, absent, uncertain in rows:
        out[DISFA_AUS[i - 1]] = {"present": present, "absent": absent, "uncertain": uncertain}
    return out


def intensity_histograms(con: Any, relation: str = "samples") -> dict[int, dict[str, int]]:
    """AU -> count of samples per intensity level "0".."5" (and "uncertain") in ``relation``."""
    rows = con.execute(
        f"SELECT i, au_intensity[i] AS level, count(*) FROM {relation}, range(1, 13) AS t(i) "
        "WHERE au_intensity[i] IS NOT NULL GROUP BY ALL"
    ).fetchall()
    out = {au: {**{str(level): 0 for level in INTENSITY_LEVELS}, "uncertain": 0} for au in DISFA_AUS}
    for i, level, count in rows:
        out[DISFA_AUS[i - 1]]["uncertain" if level < 0 else str(level)] += count
    return out


def drop_reasons(con: Any) -> dict[str, dict[str, int]]:
    """Stage -> reason -> count over the rejected rows of ``samples`` (needs include_rejected)."""
    rows = con.execute(
        "SELECT dropped_by, drop_reason, count(*) FROM samples WHERE NOT accepted GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    out: dict[str, dict[str, int]] = {}
    for stage, reason, count in rows:
        out.setdefault(str(stage), {})[str(reason)] = count
    return out


def _counts(con: Any, column: str, relation: str) -> dict[str, int]:
    rows = con.execute(f"SELECT {column}, count(*) FROM {relation} GROUP BY ALL ORDER BY ALL")
    return {str(value): count for value, count in rows.fetchall()}


def summary(run_dir: Path) -> dict[str, Any]:
    """Totals, per-AU occurrence counts and intensity histograms (accepted samples),
    demographic and emotion counts, and drop reasons by stage (rejected samples)."""
    index = read_index(run_dir) or {}
    con = connect(run_dir, include_rejected=True)
    try:
        planned, accepted = con.execute("SELECT count(*), count(*) FILTER (WHERE accepted) FROM samples").fetchall()[0]
        reasons = drop_reasons(con)
        con.execute("CREATE VIEW accepted_samples AS SELECT * FROM samples WHERE accepted")
        by = {
            c: _counts(con, c, "accepted_samples")
            for c in ("emotion", "ethnicity", "age_band", "gender", "label_source")
        }
        occurrence = au_occurrence_counts(con, "accepted_samples")
        intensity = intensity_histograms(con, "accepted_samples")
    finally:
        con.close()
    return {
        "dataset": index.get("dataset"),
        "target": index.get("target"),
        "shards": len(index.get("shards", [])),
        "planned": planned,
        "accepted": accepted,
        "rejected": planned - accepted,
        "acceptance_rate": accepted / planned if planned else None,
        "au_occurrence": occurrence,
        "au_intensity": intensity,
        "by": by,
        "drop_reasons": reasons,
    }
