"""The CLI's error edge: every input a user controls ends in one line and an exit code, never
a traceback (in process through ``factory.cli.edge.run``, and once as a real subprocess)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from factory.cli import edge
from manifests.atomic import write_error
from tests.cli.conftest import REPO, error_line

DEMO = REPO / "recipes" / "demo.toml"


@pytest.mark.parametrize("command", ["plan", "build", "doctor", "calibrate"])
@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\xff\xfe\x00\x01binary", "not a text file (byte 0 is not UTF-8)"),
        (b'[dataset]\nname = "caf\xe9"\n', "byte 21 is not UTF-8"),
        (b"[dataset\ntarget = 3\n", "not valid TOML"),
        (b"dataset = 5\n", "field 'dataset': got 5"),
        (b"[engine]\nshard_timeout_s = -1\n", "field 'engine.shard_timeout_s': got -1"),
        (b'[generator]\nname = ".:x"\n', "field 'generator.name'"),
    ],
)
def test_bad_recipe_content_is_one_line_naming_the_file(tmp_path: Path, capsys, command, content, says) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_bytes(content)
    assert edge.run([command, str(recipe)]) == 2
    line = error_line(capsys)
    assert says in line and (str(recipe) in line or "field '" in line)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda tmp: tmp / "missing.toml", "does not exist"),
        (lambda tmp: tmp, "Is a directory"),
    ],
)
def test_a_recipe_path_that_is_not_a_file(tmp_path: Path, capsys, make, says) -> None:
    path = make(tmp_path)
    assert edge.run(["plan", str(path)]) == 2
    line = error_line(capsys)
    assert says in line and str(path) in line


def test_an_override_on_a_section_that_is_not_a_table(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('dataset = "x"\n')
    assert edge.run(["plan", str(recipe), "--target", "5"]) == 2
    assert "field 'dataset': got 'x'; must be a table ([dataset]) to take --target" in error_line(capsys)


@pytest.mark.parametrize(
    ("out", "says"),
    [
        (lambda tmp: tmp / "a-file" / "run", "cannot create the output folder"),
        (lambda tmp: Path("/proc/mifa-factory-test/run"), "cannot create the output folder"),
        (lambda tmp: tmp / "a-file", "is a file, not a folder"),
        (lambda tmp: tmp / "theirs", "is not empty and is not a factory build (no run.json; it holds notes.txt)"),
    ],
)
def test_an_output_folder_that_cannot_be_ours_is_refused_before_anything_runs(
    tmp_path: Path, capsys, out, says
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("someone's work")
    target = out(tmp_path)
    assert edge.run(["build", str(DEMO), "--out", str(target)]) == 2
    line = error_line(capsys)
    assert says in line and str(target) in line
    assert sorted(p.name for p in (tmp_path / "theirs").iterdir()) == ["notes.txt"]  # nothing written


def test_usage_errors_are_one_line_naming_the_option(capsys) -> None:
    assert edge.run(["plan", str(DEMO), "--target", "many"]) == 2
    assert "Invalid value for '--target'" in error_line(capsys)
    assert edge.run(["plan", str(DEMO), "--frobnicate"]) == 2
    assert "No such option: --frobnicate" in error_line(capsys)
    assert edge.run(["plan"]) == 2
    assert "Missing argument 'recipe'" in error_line(capsys)


def test_a_full_disk_is_one_line_with_the_fix_and_exit_1(tmp_path: Path, capsys, monkeypatch) -> None:
    with pytest.raises(OSError) as full, open("/dev/full", "wb", buffering=0) as fh:
        fh.write(b"x")  # a real ENOSPC from the kernel
    assert full.value.errno == errno.ENOSPC

    def start(self, recipe, bank):  # the first durable write of a build
        raise write_error(self.run_json, full.value, "could not write")

    monkeypatch.setattr("factory.engine.rundir.RunDir.start", start)
    assert edge.run(["build", str(DEMO), "--out", str(tmp_path / "out")]) == 1
    line = error_line(capsys)
    assert "no space left on device" in line and "free space on the disk" in line and "run.json" in line


def test_an_unexpected_error_is_one_line_and_its_traceback_is_saved(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MIFA_CRASH_DIR", str(tmp_path / "crashes"))

    def broken(*args, **kwargs):
        raise ZeroDivisionError("deliberate")

    monkeypatch.setattr("factory.cli.plan.plan_statistics", broken)
    assert edge.run(["plan", str(DEMO)]) == 1
    line = error_line(capsys)
    assert "unexpected ZeroDivisionError: deliberate" in line and "please report it" in line
    saved = list((tmp_path / "crashes").glob("crash-*.txt"))
    assert len(saved) == 1 and str(saved[0]) in line
    assert "Traceback" in saved[0].read_text() and "deliberate" in saved[0].read_text()


def test_ctrl_c_exits_130_quietly(capsys, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("factory.cli.plan.plan_statistics", interrupted)
    assert edge.run(["plan", str(DEMO)]) == 130
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.subprocess
def test_the_real_command_prints_no_traceback(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_bytes(b"\x00\x9f\x92\x96")
    proc = subprocess.run(
        [sys.executable, "-m", "factory.cli", "build", str(recipe)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {recipe}: not a text file")
