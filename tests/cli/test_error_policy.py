"""The error policy lives at the CLI edge: a user error (a ``UserError`` raised where the fault
is known) ends in its message and exit 2 (1 for a failure), while a real bug inside a command
is never passed off as bad input: it exits 1 and saves its traceback to a crash file."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from factory.cli import app, edge
from factory.cli.common import print_error
from manifests.errors import FailedError, ReportError, UserError
from stages.base import StageError
from tests.cli.conftest import REPO, error_line

DEMO = REPO / "recipes" / "demo.toml"


def _bug(*args: object, **kwargs: object) -> None:
    raise ValueError("deliberate bug")


def _key_bug(*args: object, **kwargs: object) -> None:
    raise KeyError("deliberate bug")


# (argv after the dataset folder, the function a command calls that is made to fail like a bug)
BUGS = {
    "query": ([], "manifests.query.connect", _key_bug),
    "export": ([".out"], "factory.cli.export.run_export", _bug),
    "show": (["000000_00000"], "factory.cli.show.show_sample", _bug),
    "filter": ([".out"], "factory.commands.subset.make_subset", _bug),
    "report": ([], "factory.commands.report.build_report", _bug),
}


@pytest.mark.parametrize("command", sorted(BUGS))
def test_a_bug_inside_a_command_writes_a_crash_file_and_exits_1(
    command: str, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    crashes = tmp_path / "crashes"
    monkeypatch.setenv("MIFA_CRASH_DIR", str(crashes))
    rest, target, bug = BUGS[command]
    monkeypatch.setattr(target, bug)
    argv = [command, str(dataset), *(str(tmp_path / a) if a.startswith(".") else a for a in rest)]
    assert edge.run(argv) == 1
    line = error_line(capsys)
    name = "KeyError" if bug is _key_bug else "ValueError"
    assert f"unexpected {name}" in line and "deliberate bug" in line and "please report it" in line
    (saved,) = crashes.glob("crash-*.txt")
    assert str(saved) in line and "Traceback" in saved.read_text()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["query", "{empty}"], "was never committed"),
        (["export", "{empty}", "{tmp}/e"], "was never committed"),
        (["show", "{empty}", "000000_00000"], "was never committed"),
        (["filter", "{empty}", "{tmp}/s"], "was never committed"),
        (["report", "{empty}"], "was never committed"),
        (["query", "{run}", "SELECT 1", "--where", "accepted"], "pass either sql"),
        (["query", "{run}", "--where", "au_occ(3) = 1"], "AU 3 is not labelled by MIFA"),
        (["show", "{run}", "999999_00000"], "no sample '999999_00000'"),
        (["export", "{run}", "{tmp}/e", "--shard-bytes", "lots"], "--shard-bytes 'lots'"),
        (["verify", "{tmp}/nowhere"], "does not exist; pass a dataset folder"),
    ],
)
def test_a_user_error_is_one_line_and_exit_2(
    argv: list[str], says: str, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    names = {"empty": tmp_path / "empty", "run": dataset, "tmp": tmp_path}
    assert edge.run([a.format(**names) for a in argv]) == 2
    assert says in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # nothing written


def test_sql_that_duckdb_refuses_prints_its_pointer_on_real_lines(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert edge.run(["query", str(dataset), "SELECT key FROMM samples"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.rstrip("\n").split("\n")
    assert len(lines) > 1 and "Traceback" not in captured.err
    assert lines[0] == 'error: query failed: Parser Error: syntax error at or near "samples"'
    assert any(line.startswith("LINE 1: SELECT key FROMM samples") for line in lines)
    assert "\\n" not in captured.err  # real line breaks, not spelled-out ones


@pytest.mark.parametrize(
    ("argv", "out"),
    [
        (["export", "{run}", "{tmp}/e", "--where", "no_such_column = 1"], "e"),
        (["filter", "{run}", "{tmp}/s", "--where", "accepted AND"], "s"),
    ],
)
def test_a_bad_where_is_a_query_error_before_anything_is_exported(
    argv: list[str], out: str, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert edge.run([a.format(run=dataset, tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(("error: query failed: ", "error: no column 'no_such_column'")) and "Traceback" not in err
    assert not (tmp_path / out).exists() or not any((tmp_path / out).iterdir())


def test_a_failure_exits_1_and_a_report_keeps_its_lines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing_model(*args: object, **kwargs: object) -> None:
        raise StageError("model file /m/x.onnx is missing; run `factory models pull x`")

    monkeypatch.setattr("factory.cli.plan.plan_statistics", missing_model)
    assert edge.run(["plan", str(DEMO)]) == 1
    assert "model file /m/x.onnx is missing" in error_line(capsys)

    def stopped(*args: object, **kwargs: object) -> None:
        raise ReportError("build stopped\n  2 shard(s) [0, 1]: boom\x1b[31m\nFix the cause")

    monkeypatch.setattr("factory.cli.plan.plan_statistics", stopped)
    assert edge.run(["plan", str(DEMO)]) == 1
    err = capsys.readouterr().err
    assert err.split("\n") == ["error: build stopped", "  2 shard(s) [0, 1]: boom\\x1b[31m", "Fix the cause", ""]


def test_a_user_error_with_a_fix_and_its_exit_code() -> None:
    error = UserError("no bank at /b", fix="create it with `factory identities index`")
    assert str(error) == "no bank at /b; create it with `factory identities index`"
    assert edge.exit_code(error) == 2 and edge.exit_code(FailedError("shard 3 failed")) == 1
    assert edge.exit_code(ReportError("a\nb")) == 1 and ReportError.multiline and not UserError.multiline


def test_a_line_break_in_a_one_line_message_is_spelled_out(capsys: pytest.CaptureFixture[str]) -> None:
    print_error("field 'a\nb' is unknown")
    assert capsys.readouterr().err == "error: field 'a\\nb' is unknown\n"


def test_the_app_maps_errors_the_same_without_the_console_script(tmp_path: Path) -> None:
    """A test's CliRunner (or any caller of the typer app) meets the same policy as `factory`."""
    result = CliRunner().invoke(app, ["query", str(tmp_path)])
    assert result.exit_code == 2 and "was never committed" in result.output
