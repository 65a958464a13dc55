"""`factory query --columns / --format`: the columns asked for, whole, in the format asked for."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from factory.cli import app
from tests.manifests.synthetic import synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("q"), {"a": 3, "b": 2}, per_shard=4)


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["query", *args])
    return result.exit_code, result.output


def test_columns_as_csv_and_json(dataset: Path) -> None:
    code, text = _run(str(dataset), "--where", "true", "--columns", "key,identity_id,au_occurrence", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert code == 0 and len(rows) == 5 and list(rows[0]) == ["key", "identity_id", "au_occurrence"]
    assert len(json.loads(rows[0]["au_occurrence"])) == 12  # a list whole, as JSON
    code, text = _run(
        str(dataset), "SELECT identity_id, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1", "--format", "json"
    )
    assert code == 0 and json.loads(text) == [{"identity_id": "a", "n": 3}, {"identity_id": "b", "n": 2}]


def test_a_wide_result_prints_every_column_readably(dataset: Path) -> None:
    code, text = _run(str(dataset), "--where", "identity_id = 'a'", "--limit", "1")
    assert code == 0 and "row 1" in text and "1 shown" in text
    for column in ("realism_score", "au_intensity", "identity_id", "image_member"):
        assert column in text  # every column named on its own line, none squeezed out


def test_bad_columns_and_format_are_one_line_exit_2(dataset: Path) -> None:
    code, text = _run(str(dataset), "--columns", "key,smile")
    assert code == 2 and "--columns" in text and "'smile'" in text and len(text.strip().splitlines()) == 1
    code, text = _run(str(dataset), "--format", "xml")
    assert code == 2 and "--format 'xml'" in text
