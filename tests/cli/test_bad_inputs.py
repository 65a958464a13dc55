"""Bad input, one row per case: each ends in one line on stderr naming the culprit, the exit
code of the README's rule (2 bad input, 1 a failed build or check), no traceback, and nothing
written or changed in the dataset or the current folder. The dataset is written once, without
a build; every row runs in process through the CLI edge."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from factory.cli import edge
from manifests.index import write_index
from tests.cli.conftest import REPO, error_line
from tests.manifests import write_shard

DEMO = REPO / "recipes" / "demo.toml"
OUTSIDE = "outside.csv"  # a file in the current folder, outside the dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed dataset of two small shards, written without a build."""
    run_dir = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    for shard in range(2):
        write_shard(run_dir / "shards", "mifa", shard, 6, rng=rng, drop_every=3)
    write_index(run_dir, "mifa", [0, 1], target=8, surplus=[], failed={})
    return run_dir


def tree_digest(folder: Path) -> str:
    """Every file's path and bytes under ``folder``: equal digests, nothing written or changed."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


COPY = "COPY (SELECT key FROM samples) TO 'x.csv'"
SQL_ROWS = [
    ("copy", ["query", "{run}", COPY], 2, "read-only"),
    ("copy-parquet", ["query", "{run}", "COPY samples TO 'x.parquet' (FORMAT parquet)"], 2, "read-only"),
    ("attach", ["query", "{run}", "ATTACH 'x.db'"], 2, "read-only"),
    ("two-statements", ["query", "{run}", f"SELECT 1; {COPY}"], 2, "read-only"),
    ("install", ["query", "{run}", "INSTALL httpfs"], 2, "read-only"),
    ("load", ["query", "{run}", "LOAD httpfs"], 2, "read-only"),
    ("drop-view", ["query", "{run}", "DROP VIEW samples"], 2, "read-only"),
    ("create-table", ["query", "{run}", "CREATE TABLE t AS SELECT * FROM samples"], 2, "read-only"),
    ("insert", ["query", "{run}", "INSERT INTO samples VALUES (1)"], 2, "read-only"),
    ("pragma", ["query", "{run}", "PRAGMA database_list"], 2, "read-only"),
    ("set", ["query", "{run}", "SET enable_external_access = true"], 2, "read-only"),
    ("call", ["query", "{run}", "CALL duckdb_settings()"], 2, "read-only"),
    ("export-database", ["query", "{run}", "EXPORT DATABASE 'dump'"], 2, "read-only"),
    ("read-csv-outside", ["query", "{run}", f"SELECT * FROM read_csv('{OUTSIDE}')"], 2, "read-only"),
    ("read-parquet-etc", ["query", "{run}", "SELECT * FROM read_parquet('/etc/x.parquet')"], 2, "read-only"),
    ("replacement-scan", ["query", "{run}", f"SELECT * FROM '{OUTSIDE}'"], 2, "read-only"),
    ("glob", ["query", "{run}", "SELECT * FROM glob('/etc/*')"], 2, "read-only"),
    ("where-copy", ["query", "{run}", "--where", f"1=1; {COPY}"], 2, "read-only"),
    ("where-paren-escape", ["query", "{run}", "--where", f"1=1); {COPY}; SELECT (1"], 2, "read-only"),
    ("where-read-csv", ["query", "{run}", "--where", f"key IN (SELECT a FROM read_csv('{OUTSIDE}'))"], 2, "read-only"),
    ("filter-where-copy", ["filter", "{run}", "{tmp}/subset", "--where", f"1=1; {COPY}"], 2, "read-only"),
    (
        "filter-where-read-csv",
        ["filter", "{run}", "{tmp}/subset", "--where", f"key IN (SELECT a FROM read_csv('{OUTSIDE}'))"],
        2,
        "read-only",
    ),
    ("export-where-copy", ["export", "{run}", "{tmp}/export", "--where", f"1=1; {COPY}"], 2, "read-only"),
    (
        "export-where-read-csv",
        ["export", "{run}", "{tmp}/export", "--where", f"key IN (SELECT a FROM '{OUTSIDE}')"],
        2,
        "read-only",
    ),
    ("filter-balance-column", ["filter", "{run}", "{tmp}/subset", "--balance", "key", "--limit", "2"], 2, "--balance"),
    (
        "filter-balance-injection",
        ["filter", "{run}", "{tmp}/subset", "--balance", "gender) TO 'x.csv'; --", "--limit", "2"],
        2,
        "--balance",
    ),
    ("unknown-column", ["query", "{run}", "SELECT nope FROM samples"], 2, "no column 'nope' in samples; columns: key"),
    ("where-unknown-column", ["query", "{run}", "--where", "nope = 1"], 2, "no column 'nope'"),
    ("export-unknown-column", ["export", "{run}", "{tmp}/export", "--where", "nope = 1"], 2, "no column 'nope'"),
    ("empty-sql", ["query", "{run}", ";"], 2, "read-only"),
]

ROWS = SQL_ROWS


@pytest.mark.parametrize(("argv", "code", "culprit"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_naming_the_culprit_and_changes_nothing(
    argv: list[str],
    code: int,
    culprit: str,
    dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / OUTSIDE).write_text("a\nsecret\n")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # an extension install would land in ~/.duckdb
    names = {"run": dataset, "tmp": tmp_path, "demo": DEMO}
    before = (tree_digest(dataset), tree_digest(tmp_path))
    assert edge.run([a.format(**names) for a in argv]) == code
    line = error_line(capsys)
    assert culprit in line
    assert (tree_digest(dataset), tree_digest(tmp_path)) == before
    assert "secret" not in line


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) AS n FROM samples",
        "WITH s AS (SELECT key FROM samples) SELECT count(*) AS n FROM s",
        "DESCRIBE samples",
        "SUMMARIZE samples",
        "FROM samples SELECT key",
        "SELECT key FROM samples WHERE au_occ(12) >= 0",
    ],
)
def test_read_only_queries_still_work(sql: str, dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert edge.run(["query", str(dataset), sql]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and " rows" in captured.out


def test_a_refused_install_creates_no_duckdb_home(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert edge.run(["query", str(dataset), "INSTALL httpfs"]) == 2
    assert "queries are read-only" in error_line(capsys)
    assert not (tmp_path / ".duckdb").exists()


def test_the_advised_query_works_where_the_refused_one_did_not(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal says: one SELECT over `samples`; written so, the same rows come back."""
    monkeypatch.chdir(tmp_path)
    assert edge.run(["query", str(dataset), f"SELECT 1; {COPY}"]) == 2
    assert "one SELECT" in error_line(capsys)
    assert edge.run(["query", str(dataset), "SELECT key FROM samples"]) == 0
    assert "rows" in capsys.readouterr().out and list(tmp_path.iterdir()) == []
