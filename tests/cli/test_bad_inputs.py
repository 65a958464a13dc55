"""Bad input, one row per case: each ends in one line on stderr naming the culprit, the exit
code of the README's rule (2 bad input, 1 a failed build or check), no traceback, and nothing
written or changed in the dataset or the current folder. The dataset is written once, without
a build; every row runs in process through the CLI edge."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tomllib
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skimage_data

from factory.cli import edge
from factory.recipe import Recipe, recipe_from_dict
from manifests.errors import UserError
from stages.base import StageError
from tests.cli.conftest import REPO, error_line
from tests.s3server import forget_clients

DEMO = REPO / "recipes" / "demo.toml"
OUTSIDE = "outside.csv"  # a file in the current folder, outside the dataset
OUTSIDE_TEXT = "not-for-queries-4711"  # its content, never to be printed


def tree_digest(folder: Path, skip: str = "home") -> str:
    """Every file's path and bytes under ``folder`` (but ``skip``, the test's $HOME where
    libraries keep caches): equal digests, nothing written or changed."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.relative_to(folder).parts[0] != skip):
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

# Recipe files: {recipe} is written from the row's text (DEMO_HEAD: a valid [dataset]).
DEMO_HEAD = '[dataset]\nname = "r"\ntarget = 4\nshard_size = 2\n'
RECIPE_ROWS = [
    ("recipe-empty", ["build", "{recipe}"], 2, "no [dataset] table", ""),
    ("recipe-comments-only", ["build", "{recipe}"], 2, "no [dataset] table", "# nothing here\n"),
    ("recipe-no-dataset", ["build", "{recipe}"], 2, "no [dataset] table", "[engine]\ngpus = 0\n"),
    ("recipe-empty-plan", ["plan", "{recipe}"], 2, "no [dataset] table", ""),
    ("recipe-empty-doctor", ["doctor", "{recipe}"], 2, "no [dataset] table", ""),
    ("recipe-out-empty", ["build", "{recipe}"], 2, "field 'dataset.out'", '[dataset]\nout = ""\n'),
    ("recipe-out-blank", ["build", "{recipe}"], 2, "field 'dataset.out'", '[dataset]\nout = "   "\n'),
    (
        "recipe-stage-unknown-key",
        ["build", "{recipe}"],
        2,
        "unknown field 'generator.bogus_opt' in generator;",
        DEMO_HEAD + '[generator]\nname = "warp"\nbogus_opt = 1\n',
    ),
    (
        "recipe-face-unknown-key",
        ["build", "{recipe}"],
        2,
        "unknown field 'face.bogus' in face;",
        DEMO_HEAD + '[face]\nname = "dlib"\nbogus = 1\n',
    ),
    (
        "recipe-detector-unknown-key",
        ["plan", "{recipe}"],
        2,
        "unknown field 'detectors[0].bogus' in detectors[0];",
        DEMO_HEAD + '[[detectors]]\nname = "geometric"\nbogus = 1\n',
    ),
    (
        "recipe-dataset-unknown-key",
        ["build", "{recipe}"],
        2,
        "unknown field 'dataset.bogus' in dataset",
        DEMO_HEAD + "bogus = 1\n",
    ),
    (
        "recipe-stage-bad-value",
        ["build", "{recipe}"],
        2,
        "field 'realism.checkpoint'",
        DEMO_HEAD + '[realism]\nname = "learned-realism"\ncheckpoint = 5\n',
    ),
    (
        "doctor-stage-cannot-load",
        ["doctor", "{recipe}"],
        1,
        "stage realism = learned-realism",
        DEMO_HEAD + '[realism]\nname = "learned-realism"\ncheckpoint = "nope.pt"\n',
    ),
]

RECIPE_ROWS += [
    (
        "doctor-address-unreachable",
        ["doctor", "{recipe}"],
        1,
        "Ray cluster",
        DEMO_HEAD + '[engine]\naddress = "127.0.0.1:1"\n',
    ),
    (
        "recipe-address-unreachable",
        ["build", "{recipe}"],
        2,
        "--address 127.0.0.1:1",
        DEMO_HEAD + '[engine]\naddress = "127.0.0.1:1"\n',
    ),
]

# Flags of `factory build` on a valid recipe ({demo}: recipes/demo.toml, out in the temp folder).
FLAG_ROWS = [
    ("out-empty", ["build", "{demo}", "--out", ""], 2, "field 'dataset.out'"),
    ("out-blank", ["build", "{demo}", "--out", "  "], 2, "field 'dataset.out'"),
    ("out-credentials", ["build", "{demo}", "--out", "s3://user:pw@bucket/x"], 2, "dataset.out"),
    ("address-nothing-listening", ["build", "{demo}", "--address", "127.0.0.1:1"], 2, "127.0.0.1:1"),
    ("address-ray-client", ["build", "{demo}", "--address", "ray://127.0.0.1:1"], 2, "ray://127.0.0.1:1"),
    ("address-not-host-port", ["build", "{demo}", "--address", "nonsense"], 2, "--address 'nonsense'"),
    ("gpus-none-here", ["build", "{demo}", "--gpus", "999"], 2, "--gpus 999"),
    ("gpus-over-local", ["build", "{demo}", "--gpus", "4", "--local-gpus", "2"], 2, "--local-gpus 2"),
    ("target-negative", ["build", "{demo}", "--target", "-1"], 2, "dataset.target"),
    ("retry-a-recipe", ["retry", "{demo}"], 2, "demo.toml"),
    ("models-pull-unknown", ["models", "pull", "bogus-name"], 2, "unknown model 'bogus-name'"),
    ("identities-index-no-bank", ["identities", "index", "{tmp}/nobank"], 2, "nobank"),
]

# Commands that take a run folder, given one that is not a (usable) build.
RUN_ROWS = [
    ("retry-not-a-build", ["retry", "{tmp}/nowhere"], 2, "nowhere"),
    ("retry-a-dataset-without-run-json", ["retry", "{run}"], 2, "not a build directory"),
    ("status-not-a-build", ["status", "{tmp}/nowhere"], 2, "nowhere"),
    ("verify-nowhere", ["verify", "{tmp}/nowhere"], 2, "nowhere"),
    ("query-nowhere", ["query", "{tmp}/nowhere"], 2, "nowhere"),
    ("show-unknown-key", ["show", "{run}", "999999_00000"], 2, "999999_00000"),
    ("export-onto-source", ["export", "{run}", "{run}"], 2, "would contain the source"),
    ("filter-into-source", ["filter", "{run}", "{run}"], 2, "{run}"),
]

# Object storage that does not answer (the endpoint in the environment).
UNREACHABLE = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
STORAGE_ROWS = [
    ("s3-query-unreachable", ["query", "s3://bucket/x"], 2, "endpoint http://127.0.0.1:1"),
    ("s3-build-unreachable", ["build", "{demo}", "--out", "s3://bucket/x"], 2, "endpoint http://127.0.0.1:1"),
]

ROWS = (
    [(*r, "", {}) for r in SQL_ROWS]
    + [(*r, {}) for r in RECIPE_ROWS]
    + [(*r, "", {}) for r in FLAG_ROWS + RUN_ROWS]
    + [(*r, "", UNREACHABLE) for r in STORAGE_ROWS]
)


@pytest.mark.parametrize(
    ("argv", "code", "culprit", "recipe_text", "env"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_bad_input_is_one_line_naming_the_culprit_and_changes_nothing(
    argv: list[str],
    code: int,
    culprit: str,
    recipe_text: str,
    env: dict[str, str],
    dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / OUTSIDE).write_text(f"a\n{OUTSIDE_TEXT}\n")
    (tmp_path / "r.toml").write_text(recipe_text)
    demo = DEMO.read_text().replace('out = "runs/demo"', f'out = "{tmp_path / "out"}"')
    (tmp_path / "demo.toml").write_text(demo)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # an extension install would land in ~/.duckdb
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if env:
        forget_clients()  # fsspec caches clients with their endpoint; this row's is in env
    names = {"run": dataset, "tmp": tmp_path, "recipe": tmp_path / "r.toml", "demo": tmp_path / "demo.toml"}
    before = (tree_digest(dataset), tree_digest(tmp_path))
    assert edge.run([a.format(**names) for a in argv]) == code
    line = error_line(capsys)
    assert culprit.format(**names) in line
    assert (tree_digest(dataset), tree_digest(tmp_path)) == before
    assert OUTSIDE_TEXT not in line


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


def test_an_empty_recipe_is_refused_and_the_advised_dataset_table_is_enough(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text("")
    assert edge.run(["plan", str(recipe)]) == 2
    assert "needs at least [dataset]" in error_line(capsys)
    recipe.write_text("[dataset]\ntarget = 20\nshard_size = 10\n")
    assert edge.run(["plan", str(recipe)]) == 0


def test_an_unknown_column_lists_the_columns_and_a_listed_one_works(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert edge.run(["query", str(dataset), "SELECT emotions FROM samples"]) == 2
    line = error_line(capsys)
    assert "no column 'emotions'" in line and "emotion," in line
    assert edge.run(["query", str(dataset), "SELECT emotion FROM samples"]) == 0


def test_retry_works_on_the_run_folder_it_is_given_wherever_it_runs(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorded dataset.out is relative to where the build ran; retry builds in RUN."""
    run = tmp_path / "elsewhere" / "run"
    run.mkdir(parents=True)
    recipe = recipe_from_dict(tomllib.loads(DEMO.read_text()))
    assert recipe.dataset.out == "runs/demo"  # relative: the trap
    (run / "run.json").write_text(
        json.dumps({"dataset": recipe.dataset.name, "recipe": recipe.model_dump(mode="json")})
    )
    seen: list[str] = []

    def fake_build(r: Recipe, **options: object) -> None:
        seen.append(r.dataset.out)
        raise UserError("stopped before Ray")

    monkeypatch.setattr("factory.engine.build.build", fake_build)
    monkeypatch.chdir(tmp_path)
    assert edge.run(["retry", str(run)]) == 2
    assert seen == [str(run)] and not (tmp_path / "runs").exists()
    capsys.readouterr()


def _bank(folder: Path, image: str, data: bytes | None) -> Path:
    folder.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    if data is not None:
        (folder / image).write_bytes(data)
    rows = [("astronaut", "astronaut.png"), ("broken", image)]
    lines = ["identity_id,image,ethnicity,age_band,gender,source,licence"]
    lines += [f"{i},{f},white,adult,female,test,public-domain" for i, f in rows]
    (folder / "identities.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize(("image", "cut"), [("gone.png", None), ("truncated.png", 0.5), ("empty.png", 0.0)])
def test_identities_index_names_a_missing_or_truncated_image(
    image: str, cut: float | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(whole, format="png")
    data = None if cut is None else whole.getvalue()[: int(len(whole.getvalue()) * cut)]
    bank = _bank(tmp_path / "bank", image, data)
    assert edge.run(["identities", "index", str(bank)]) == 2
    line = error_line(capsys)
    assert f"image '{image}' of identity 'broken'" in line and "identities.csv" in line


def test_a_stage_message_of_several_lines_prints_real_lines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing_layout(*args: object, **kwargs: object) -> None:
        raise StageError("MAUGen checkpoint file /m/unet is missing.\n  expected: /m/unet/model.safetensors")

    monkeypatch.setattr("factory.cli.plan.plan_statistics", missing_layout)
    assert edge.run(["plan", str(DEMO)]) == 1
    err = capsys.readouterr().err
    assert err.split("\n") == [
        "error: MAUGen checkpoint file /m/unet is missing.",
        "  expected: /m/unet/model.safetensors",
        "",
    ]


@pytest.mark.slow
@pytest.mark.s3
def test_an_unreachable_endpoint_is_named_and_the_reachable_one_works(
    dataset: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The advice: check AWS_ENDPOINT_URL and that the server is up; with both, the query runs."""
    from tests.s3server import s3_server  # deferred: moto is heavy and only this test needs it

    with s3_server() as s3:
        url = s3.url("ds")
        s3.fs().put(f"{dataset}/", url.removeprefix("s3://") + "/", recursive=True)
        endpoint = os.environ["AWS_ENDPOINT_URL"]
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        forget_clients()
        assert edge.run(["query", url, "SELECT count(*) AS n FROM samples"]) == 2
        assert "endpoint http://127.0.0.1:1" in error_line(capsys)
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        forget_clients()  # a new command is a new process: no client of the old endpoint
        assert edge.run(["query", url, "SELECT count(*) AS n FROM samples"]) == 0
        assert "1 rows" in capsys.readouterr().out
