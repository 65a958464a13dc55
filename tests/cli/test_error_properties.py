"""Property: generated malformed recipes and argument lists thrown at the CLI end in exit code
2 and one message line naming a field, an option or a path; never a traceback.

Every generated input is malformed by construction (a recipe is checked to fail validation
before it is used), so no example ever starts a build.
"""

from __future__ import annotations

import json
import string
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factory.cli import edge
from factory.recipe import Recipe, RecipeError, recipe_from_dict
from tests.cli.conftest import REPO, error_line

DEMO = REPO / "recipes" / "demo.toml"
SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
RECIPE_COMMANDS = ("plan", "build", "doctor", "calibrate")
SECTIONS = ("dataset", "aus", "engine", "output", "identities", "emotions", "demographics")
NUMBERS = {  # bounded numeric fields: (section, field) -> (low, high), as the recipe declares them
    ("dataset", "target"): (1, 100_000_000),
    ("dataset", "shard_size"): (1, 100_000),
    ("dataset", "seed"): (0, 2**32 - 1),
    ("engine", "gpus"): (0, 4096),
    ("engine", "batch_size"): (1, 1024),
    ("engine", "max_retries"): (0, 100),
    ("engine", "fail_fast_shards"): (1, 100_000),
    ("output", "image_quality"): (1, 100),
    ("output", "image_size"): (32, 2048),
}

names = st.text(string.ascii_lowercase + "_", min_size=1, max_size=12)
scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=30),
)
values = st.one_of(scalars, st.lists(scalars, max_size=4))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def _toml(doc: dict[str, Any]) -> str:
    top = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    tables = [
        f"[{json.dumps(k)}]\n" + "".join(f"{json.dumps(f)} = {_toml_value(v)}\n" for f, v in body.items())
        for k, body in doc.items()
        if isinstance(body, dict)
    ]
    return "\n".join(top) + "\n" + "\n".join(tables)


@st.composite
def bad_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A recipe document with one or more malformed fields, among valid-looking others."""
    doc: dict[str, Any] = {"dataset": {"target": draw(st.integers(1, 50))}}
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["unknown", "unknown-in-section", "wrong-type", "out-of-range", "stage", "scalar"]))
        section = draw(st.sampled_from(SECTIONS))
        if kind == "unknown":
            doc[draw(names.filter(lambda n: n not in Recipe.model_fields))] = draw(values)
        elif kind == "unknown-in-section":
            doc.setdefault(section, {})
            if isinstance(doc[section], dict):
                doc[section][draw(names)] = draw(values)
        elif kind in ("wrong-type", "out-of-range"):
            (sec, field), (low, high) = draw(st.sampled_from(sorted(NUMBERS.items())))
            bad = (
                draw(st.one_of(st.text(max_size=10), st.lists(scalars, max_size=3), st.floats(0.1, 0.9)))
                if kind == "wrong-type"
                else draw(st.one_of(st.integers(max_value=low - 1), st.integers(min_value=high + 1, max_value=2**62)))
            )
            if isinstance(doc.setdefault(sec, {}), dict):
                doc[sec][field] = bad
        elif kind == "stage":
            path = draw(st.sampled_from(["generator", "face", "realism", "filters"]))
            doc[path] = {"name": draw(st.text(max_size=20))}
        else:
            doc[section] = draw(scalars)
    return doc


def _is_rejected(doc: dict[str, Any]) -> bool:
    try:
        recipe_from_dict(doc)
    except RecipeError:
        return True
    return False


malformed_toml = bad_documents().map(_toml).filter(lambda text: _parses(text) and _is_rejected(tomllib.loads(text)))
broken_syntax = st.text(max_size=80).map(lambda t: t + "\n[[x\n= ").filter(lambda t: not _parses(t))
binary = st.tuples(st.binary(max_size=40), st.binary(max_size=40)).map(lambda ab: ab[0] + b"\xff" + ab[1])


def _parses(text: str) -> bool:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False
    return True


@SETTINGS
@given(
    content=st.one_of(malformed_toml.map(str.encode), broken_syntax.map(str.encode), binary),
    command=st.sampled_from(RECIPE_COMMANDS),
)
def test_malformed_recipes_exit_2_with_one_line_naming_a_field_or_the_file(capsys, content, command) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "recipe.toml"
        recipe.write_bytes(content)
        assert edge.run([command, str(recipe)]) == 2
        line = error_line(capsys)
        assert str(recipe) in line or "field '" in line, line


# --- argument lists -------------------------------------------------------------------


@st.composite
def bad_arguments(draw: st.DrawFn, tmp: Path) -> tuple[list[str], set[str]]:
    """(argv, what the error may name): a command, its recipe or run folder, and options of
    which at least one is malformed."""
    junk = st.text(string.ascii_letters + string.digits + "-_.:/ ", min_size=1, max_size=15)
    bad_options = {
        "--target": st.one_of(junk.filter(lambda t: not t.strip().lstrip("+").isdigit()), st.integers(max_value=0)),
        "--seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32)),
        "--gpus": st.one_of(st.integers(max_value=-1), st.integers(min_value=4097, max_value=10**9)),
        "--out": st.sampled_from([str(tmp / "file" / "x"), str(tmp / "file"), str(tmp / "theirs"), "/proc/mifa/x"]),
        "--" + draw(names.map(lambda n: "zz" + n)): junk,  # an option no command has
    }
    command = draw(st.sampled_from(["plan", "build", "status", "retry", "eval", "query"]))
    recipe_like = command in ("plan", "build")
    target = draw(
        st.sampled_from(
            [str(DEMO)] * 3 + [str(tmp / "missing.toml"), str(tmp), str(tmp / "binary.toml")]
            if recipe_like
            else [str(tmp / "missing"), str(tmp / "file"), str(tmp / "theirs")]
        )
    )
    argv, named = [command, target], {target, "field '"}
    chosen = draw(st.lists(st.sampled_from(sorted(bad_options)), min_size=1 if target == str(DEMO) else 0, max_size=3))
    for option in chosen:
        argv += [option, str(draw(bad_options[option]))]
        named |= {option, option.lstrip("-"), argv[-1]}
    if draw(st.booleans()) and chosen:  # sometimes the recipe or folder is missing altogether
        argv.remove(target)
        named |= {"recipe", "run_dir", "Missing argument", "Got unexpected extra argument"}
    named |= {"Invalid value", "No such option"}  # typer names the option in these
    return argv, named


@pytest.fixture(scope="module")
def arg_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("args")
    (tmp / "file").write_text("a file, not a folder")
    (tmp / "theirs").mkdir()
    (tmp / "theirs" / "notes.txt").write_text("someone's files")
    (tmp / "binary.toml").write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    return tmp


@SETTINGS
@given(data=st.data())
def test_malformed_argument_lists_exit_2_with_one_line_naming_an_option_or_a_path(capsys, arg_tmp, data) -> None:
    argv, named = data.draw(bad_arguments(arg_tmp))
    assert edge.run(argv) == 2, argv
    line = error_line(capsys)
    assert any(token in line for token in named), (argv, line)
    assert sorted(p.name for p in (arg_tmp / "theirs").iterdir()) == ["notes.txt"]
