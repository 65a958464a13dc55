"""README.md, executed: every ``factory`` command of its bash blocks and every python block runs
against a freshly written small dataset, in README order, so the README cannot drift.

The dataset: 48 samples of 12 identities in 8 shards named ``mifa_demo`` (the demo's shard
count), written with the project's writer and index (no Ray), at ``runs/demo`` and
``runs/mifa-1m`` of a scratch folder that also links ``recipes/``. A command that needs GPUs,
model weights, a Ray build or the network is not run: :data:`NOT_RUN` names it and says why,
and it is reported as skipped with that reason (``pytest -rs``). A command that needs a build
directory (:data:`ON_BUILD`) is run by ``tests/commands/test_readme_on_build.py`` on the
session's demo build and an identity-bank run directory. A command the README gains that is
neither run nor listed fails the test that checks the list is complete.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from factory.cli import app
from tests.manifests.synthetic import synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
_BUILD = "a Ray build on GPUs with model weights (tests/commands build the demo)"
# Command prefix -> why it is not run here.
NOT_RUN: dict[str, str] = {
    "make demo": "installs the package (pip: network), then builds the full demo; tests/commands build it small",
    "make test": "is the test suite itself",
    "factory doctor": "reports on GPUs and model weights this machine does not have",
    "factory plan recipes/mifa-1m.toml --estimate --measure": "measures batches on GPUs",
    "RAY_AUTH_MODE=token": (
        "asks a remote head for its token over ssh (network); tests/cli/test_token_auth_cluster.py follows it "
        "on a local token-auth head"
    ),
    "factory build": _BUILD,
    "factory retry": _BUILD,
    "factory models pull": "downloads model weights",
}
# Command prefix -> the build directory it needs; tests/commands/test_readme_on_build.py runs them.
ON_BUILD: dict[str, str] = {
    "factory status": "the demo build",
    "factory show": "the demo build (its recorded plans)",
    "factory identities index": "the bank folder the identity-bank export writes",
    "factory export runs/identity-bank": "an identity-bank run directory",
    "factory train-realism": "folders of real faces (the builtin portraits) and generated ones (the demo build's)",
}


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", README.read_text(), flags=re.DOTALL)


def readme_commands() -> list[str]:
    """The shell commands of README's bash blocks: continuations joined, comments cut."""
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.split(r"(?:^|\s+)#\s", line.strip(), maxsplit=1)[0].strip()
            if command:
                commands.append(" ".join(command.split()))
    return commands


def _reason(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


def on_build(command: str) -> bool:
    return any(command.startswith(prefix) for prefix in ON_BUILD)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    identities = {f"person{i:02d}": 4 for i in range(12)}
    synthetic_dataset(folder / "runs" / "demo", identities, per_shard=6, name="mifa_demo", agreement=1.0)
    (folder / "runs" / "mifa-1m").symlink_to("demo")
    (folder / "recipes").symlink_to(REPO / "recipes")
    return folder


def test_every_readme_command_is_run_or_says_why_not() -> None:
    commands = readme_commands()
    assert any(c.startswith("factory export") for c in commands) and _blocks("python")
    unknown = [c for c in commands if not c.startswith("factory ") and _reason(c) is None]
    assert unknown == [], f"README commands neither run nor listed in NOT_RUN: {unknown}"


def test_readme_commands_and_python_blocks_run(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(scratch)
    ran = []
    for command in readme_commands():
        if _reason(command) is not None or on_build(command):
            continue
        result = CliRunner().invoke(app, shlex.split(command)[1:])
        assert result.exit_code == 0, f"README: `{command}` exited {result.exit_code}:\n{result.output[-2000:]}"
        ran.append(command)
    assert any("--format huggingface" in c for c in ran) and any("query" in c for c in ran)
    for block in _blocks("python"):
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})  # the README's own code
    assert os.path.isdir(scratch / "smile50k-hf" / "data")


@pytest.mark.parametrize("command", [c for c in readme_commands() if _reason(c) is not None])
def test_readme_commands_not_run_here(command: str) -> None:
    pytest.skip(f"README `{command}`: not run here: {_reason(command)}")
