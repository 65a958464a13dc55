"""README.md's commands that need a build directory, run as written on real ones: ``factory
status`` and ``factory show ... --regenerate`` on the session's small demo build (``demo_build``),
and the identity-bank commands (``factory export runs/identity-bank my-bank/ --format
identity-bank``, ``factory identities index my-bank/``) on an identity-bank run directory of
real portraits (the builtin bank's photographs written with the project's writer and index:
no GPU, no Ray). The scratch folder links ``runs/mifa-1m`` to the demo build and holds
``runs/identity-bank``, so the README's own paths resolve; only the sample key is substituted.
Which commands this runs is :data:`tests.test_readme.ON_BUILD`.
"""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from factory.cli import app
from manifests.bank import open_bank
from manifests.index import write_index
from manifests.query import query
from manifests.writer import ShardWriter
from tests.manifests import make_record
from tests.test_readme import ON_BUILD, on_build, readme_commands

README_KEY = "000123_00042"


def _identity_bank_run(run_dir: Path) -> None:
    """An identity-bank build's run directory: one shard of the builtin bank's portraits, each
    its own identity, and the run.json recipe the identity-bank format reads."""
    bank, rng = open_bank("builtin"), np.random.default_rng(0)
    with ShardWriter(run_dir / "shards", "idbank", 0) as writer:
        for index, identity in enumerate(bank.records()):
            record = make_record(0, index, rng)
            record.update(identity_id=f"synthetic-{index}", emotion="neutral", image=bank.image(identity.identity_id))
            writer.add(record)
        writer.commit()
    write_index(run_dir, "idbank", [0], target=len(bank.records()), surplus=[], failed={})
    shares = {"ethnicity": {"white": 1.0}, "age_band": {"adult": 1.0}, "gender": {"female": 1.0}}
    recipe = {
        "dataset": {"name": "idbank", "kind": "identity-bank"},
        "demographics": shares,
        "bank": {"licence": "public-domain"},
        "generator": {"name": "tests.engine.portraits:PortraitStandIn"},
        "filters": {"name": "portrait-filters", "embedder": "dlib"},
    }
    (run_dir / "run.json").write_text(json.dumps({"dataset": "idbank", "recipe": recipe}))


def _realism_folders(scratch: Path, demo_run: Path) -> None:
    """``real_faces/``: the builtin bank's two photographs; ``generated/``: two demo images."""
    (scratch / "real_faces").mkdir()
    bank = open_bank("builtin")
    for identity in bank.records():
        Image.fromarray(bank.image(identity.identity_id)).save(scratch / "real_faces" / f"{identity.identity_id}.png")
    (scratch / "generated").mkdir()
    tar = sorted((demo_run / "shards").glob("*.tar"))[0]
    for sample in list(wds.WebDataset(str(tar), shardshuffle=False))[:2]:
        encoded = next(value for name, value in sample.items() if name.endswith(("jpg", "png", "webp")))
        Image.open(io.BytesIO(encoded)).save(scratch / "generated" / f"{sample['__key__']}.png")


def _order(commands: list[str]) -> list[str]:
    """Each distinct command once (two README sections name the same bank export; a second
    export into the finished folder is refused on purpose, naming --overwrite), in README order
    except that the bank export comes first: ``identities index my-bank/`` indexes the folder
    the export writes (recipes/identity-bank.toml runs them in that order)."""
    commands = list(dict.fromkeys(commands))
    exports = [c for c in commands if c.startswith("factory export")]
    return exports + [c for c in commands if c not in exports]


def test_readme_build_commands_run_on_real_build_directories(
    demo_build: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = _order([c for c in readme_commands() if on_build(c)])
    assert {next(p for p in ON_BUILD if c.startswith(p)) for c in commands} == set(ON_BUILD)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mifa-1m").symlink_to(demo_build[0])
    _identity_bank_run(tmp_path / "runs" / "identity-bank")
    _realism_folders(tmp_path, demo_build[0])
    key = query(demo_build[0], sql="SELECT key FROM samples ORDER BY key LIMIT 1")["key"][0].as_py()
    monkeypatch.chdir(tmp_path)
    outputs = {}
    for command in commands:
        result = CliRunner().invoke(app, shlex.split(command.replace(README_KEY, key))[1:])
        assert result.exit_code == 0, f"README: `{command}` exited {result.exit_code}:\n{result.output[-2000:]}"
        outputs[command.split()[1]] = result.output
    assert "verified" in outputs["status"] and "regenerated identically" in outputs["show"]
    embedded = json.loads((tmp_path / "my-bank" / "export.json").read_text())
    assert embedded["samples"] == len(open_bank("builtin").records())
    assert (tmp_path / "my-bank" / "embeddings.parquet").is_file()
    assert len(open_bank(str(tmp_path / "my-bank")).records()) == embedded["samples"]
    assert (tmp_path / "realism.pt").stat().st_size > 0 and "accuracy" in outputs["train-realism"]
