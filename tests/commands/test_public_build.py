"""The public-weights path: `factory doctor` on recipes/mifa-1m.toml after the pulls (tiny stand-ins
in the real layout), `factory plan` without a bank folder, and `factory plan --estimate`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bench.tiny_models import build_tiny_fineface
from factory.cli import app
from factory.commands import estimate as estimate_module
from factory.commands.doctor import run_checks
from factory.commands.estimate import EstimateError, estimate, measure_batch_seconds
from factory.recipe import load_recipe, recipe_from_dict
from stages.catalogue import entry
from stages.detectors.opengraphau.model import ARCHS, build_mefarg
from tests.stages.detectors.test_opengraphau import TINY as TINY_OPENGRAPHAU
from tests.stages.faces.tiny_scrfd import export_tiny_scrfd

REPO = Path(__file__).resolve().parents[2]


class _LibreFaceEncoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 512, 7, stride=32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 1)  # (1, 512, 1, 1) as LibreFace's


def _onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, names: tuple[str, str]) -> None:
    with warnings.catch_warnings():  # the TorchScript exporter (dynamo=False) warns it is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(), (example,), str(path), input_names=[names[0]], output_names=[names[1]], dynamo=False
        )


@pytest.fixture(scope="module")
def pulled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder laid out as the 1M recipe's pulls leave it, with tiny random stand-ins."""
    models = build_tiny_fineface(tmp_path_factory.mktemp("pulled") / "models")
    export_tiny_scrfd(models / entry("scrfd-10g").filename)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(ARCHS, "resnet50", TINY_OPENGRAPHAU["resnet50"])
        torch.manual_seed(1)
        torch.save(
            {"state_dict": build_mefarg("resnet50").state_dict()}, models / entry("opengraphau-resnet50").filename
        )
    torch.manual_seed(2)
    _onnx(
        _LibreFaceEncoder(),
        torch.zeros(1, 3, 224, 224),
        models / entry("libreface-au-encoder").filename,
        ("image", "feature"),
    )
    _onnx(
        torch.nn.Linear(512, 12),
        torch.zeros(1, 512),
        models / entry("libreface-au-intensity").filename,
        ("feature", "au_intensity"),
    )
    return models


def test_doctor_reports_every_stage_of_the_1m_recipe_usable(pulled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIFA_MODELS_DIR", str(pulled))
    monkeypatch.setitem(ARCHS, "resnet50", TINY_OPENGRAPHAU["resnet50"])
    monkeypatch.chdir(REPO)  # the recipe names its LibreFace spec relative to the repository
    checks = run_checks(load_recipe(REPO / "recipes" / "mifa-1m.toml"))
    stages = {c.name: c for c in checks if c.name.startswith("stage ")}
    assert set(stages) == {
        "stage prompt = prompt", "stage generator = fineface", "stage face = scrfd",
        "stage detectors[0] = geometric", "stage detectors[1] = opengraphau", "stage detectors[2] = onnx-au",
        "stage agreement = agreement", "stage realism = heuristic-realism", "stage filters = filters",
    }  # fmt: skip
    assert all(c.ok for c in stages.values()), {n: c.detail for n, c in stages.items() if not c.ok}
    assert next(c for c in checks if c.name == "identity bank").ok


def test_doctor_without_the_pulls_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIFA_MODELS_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no ./models, no recipes/detectors: nothing found by accident
    recipe = load_recipe(REPO / "recipes" / "mifa-1m.toml")
    checks = {c.name: c for c in run_checks(recipe) if c.name.startswith("stage ")}
    generator = checks["stage generator = fineface"]
    assert not generator.ok and str(tmp_path / "stable-diffusion-2-1-base") in generator.detail
    assert "factory models pull" in generator.detail


def test_plan_without_the_bank_folder_prints_the_statistics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # models/identity-bank does not exist here
    result = CliRunner().invoke(app, ["plan", str(REPO / "recipes" / "mifa-1m-maugen.toml"), "--target", "2000"])
    assert result.exit_code == 0, result.output
    assert "ethnicity" in result.output and "AU12" in result.output
    assert "models/identity-bank is not there" in " ".join(result.output.split())


def test_plan_with_a_broken_bank_folder_is_still_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "identity-bank").mkdir(parents=True)  # there, but no identities.csv
    result = CliRunner().invoke(app, ["plan", str(REPO / "recipes" / "mifa-1m-maugen.toml"), "--target", "100"])
    assert result.exit_code == 2 and "identities.csv" in result.output


def test_estimate_from_stated_numbers() -> None:
    recipe = recipe_from_dict({"dataset": {"target": 1000}, "engine": {"gpus": 4, "batch_size": 10}})
    e = estimate(recipe, batch_seconds=20.0, acceptance=0.25)
    assert (e.samples, e.batch_source, e.acceptance_source) == (4000, "stated", "stated")
    assert e.gpu_hours == pytest.approx(400 * 20 / 3600)  # 400 batches of 20 s
    assert e.wall_hours == pytest.approx(e.gpu_hours / 4)
    assert estimate(recipe, workers=8, batch_seconds=20.0, acceptance=0.25).wall_hours == pytest.approx(e.gpu_hours / 8)
    default = estimate(recipe, batch_seconds=20.0)
    assert default.acceptance == recipe.engine.expected_acceptance_rate
    with pytest.raises(EstimateError, match="--batch-seconds"):
        estimate(recipe)


def test_estimate_reads_a_running_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's done shards give the measured time per batch and the running acceptance rate."""
    recipe = recipe_from_dict({"dataset": {"target": 900, "out": str(tmp_path)}, "engine": {"batch_size": 10}})
    monkeypatch.setattr(estimate_module, "run_rates", lambda run, n: (0.3, 12.0, 5) if run == tmp_path else None)
    e = estimate(recipe, run_dir=tmp_path)
    assert (e.acceptance, e.batch_seconds, e.samples) == (0.3, 12.0, 3000)
    assert "5 done shard" in e.batch_source and "running rate" in e.acceptance_source
    assert estimate(recipe, run_dir=tmp_path, batch_seconds=1.0, acceptance=0.5).samples == 1800  # stated wins


def test_run_rates_of_done_shards(tmp_path: Path) -> None:
    from factory.engine.rundir import RunDir

    run = RunDir(tmp_path, "t")
    (tmp_path / "run.json").write_text(json.dumps({"dataset": "t", "recipe": {}}))  # what open_run asks of a build
    for shard, (planned, accepted, wall) in enumerate(((10, 4, 30.0), (10, 6, 50.0))):
        paths = run.shard_paths(shard)
        paths.tar.parent.mkdir(parents=True, exist_ok=True)
        paths.tar.write_bytes(b"t")
        paths.parquet.write_bytes(b"p")
        stats = {"planned": planned, "accepted": accepted, "wall_seconds": wall, "tar_bytes": 1, "parquet_bytes": 1}
        paths.stats.write_text(json.dumps(stats))
    rate, seconds, shards = estimate_module.run_rates(tmp_path, 5)
    assert (rate, seconds, shards) == (0.5, 20.0, 2)  # 10/20 accepted; 80 s over 4 batches of 5


def test_estimate_measures_a_batch_here(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = {"dataset": {"target": 50, "shard_size": 10}, "identities": {"bank": "builtin"}, "engine": {"batch_size": 4}}
    doc.update(face={"name": "none"}, detectors=[], agreement={"name": "none"}, realism={"name": "none"})
    doc.update(filters={"name": "none"}, output={"image_size": 64})
    recipe = recipe_from_dict(doc)
    seconds = measure_batch_seconds(recipe)
    assert 0.0 < seconds < 60.0
    result = CliRunner().invoke(
        app, ["plan", str(REPO / "recipes" / "demo.toml"), "--estimate", "--batch-seconds", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "wall time on 2 CPU workers" in result.output
