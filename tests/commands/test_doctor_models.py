"""`factory doctor` shows a catalogue model file a stage reads as its own row: MagicFace's
BiSeNet face-parsing file with ``bg = "auto"`` (missing: a warning row, the landmark-hull
stand-in runs; a build is not stopped) and ``bg = "bisenet"`` (missing: a failed row that
doctor stops at), named with its path and the `factory models pull` fix; the identity check's
ArcFace file likewise (missing with ``identity_model = "auto"``: dlib's descriptor runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from factory.cli import app
from factory.commands import doctor
from factory.commands.doctor import Check, blocking, run_checks
from factory.recipe import recipe_from_dict

ROW = "model bisenet-face-parsing"


@pytest.fixture(autouse=True)
def _no_package_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The package and GPU rows import every optional package (torch, diffusers, openai, ...:
    seconds on a cold process) and are not what these tests are about."""
    monkeypatch.setattr(doctor, "_package_checks", list)
    monkeypatch.setattr(doctor, "_gpu_check", lambda: Check("GPUs", False, "not probed here"))


FIX = "factory models pull bisenet-face-parsing"


def _generator(tmp_path: Path, bg: str) -> dict[str, str]:
    """MagicFace with every file it reads in ``tmp_path`` (none there unless a test writes it)."""
    return {
        "name": "magicface",
        "bg": bg,
        "bisenet_file": str(tmp_path / "79999_iter.pth"),
        "sd_dir": str(tmp_path / "sd"),
        "weights_dir": str(tmp_path / "magicface"),
    }


def _recipe_doc(tmp_path: Path, bg: str) -> dict[str, object]:
    return {"identities": {"bank": "builtin"}, "generator": _generator(tmp_path, bg)}


def _row(checks: list[Check]) -> Check:
    (row,) = [c for c in checks if c.name == ROW]
    return row


def test_a_missing_bisenet_file_with_bg_auto_is_a_warning_row_not_a_stop(tmp_path: Path) -> None:
    checks = run_checks(recipe_from_dict(_recipe_doc(tmp_path, "auto")))
    row = _row(checks)
    assert row.ok and row.warning
    assert str(tmp_path / "79999_iter.pth") in row.detail and "landmark-hull stand-in" in row.detail
    assert FIX in row.detail and "generator.bg = 'auto'" in row.detail
    assert row not in blocking(checks)


def test_a_missing_bisenet_file_with_bg_bisenet_is_a_failed_row_doctor_stops_at(tmp_path: Path) -> None:
    checks = run_checks(recipe_from_dict(_recipe_doc(tmp_path, "bisenet")))
    row = _row(checks)
    assert not row.ok and FIX in row.detail and "generator.bg = 'bisenet'" in row.detail
    assert row in blocking(checks)


def test_a_present_bisenet_file_is_a_plain_row_and_landmark_hull_has_none(tmp_path: Path) -> None:
    (tmp_path / "79999_iter.pth").write_bytes(b"weights")
    row = _row(run_checks(recipe_from_dict(_recipe_doc(tmp_path, "auto"))))
    assert row.ok and not row.warning and row.detail.startswith(str(tmp_path / "79999_iter.pth"))
    assert not [c for c in run_checks(recipe_from_dict(_recipe_doc(tmp_path, "landmark-hull"))) if c.name == ROW]


@pytest.mark.parametrize(("bg", "listed"), [("auto", False), ("bisenet", True)])
def test_doctor_prints_the_row_and_stops_only_at_an_explicit_bisenet(tmp_path: Path, bg: str, listed: bool) -> None:
    recipe = tmp_path / "recipe.toml"
    generator = "".join(f'{k} = "{v}"\n' for k, v in _generator(tmp_path, bg).items())
    recipe.write_text(f'[dataset]\nname = "d"\n[identities]\nbank = "builtin"\n[generator]\n{generator}')
    result = CliRunner().invoke(app, ["doctor", str(recipe)])
    assert ROW in result.output and ("yes, warning" in result.output) is (not listed)
    # The SD 1.5 and MagicFace folders are missing too: doctor fails at the stage either way.
    assert result.exit_code == 1 and "stage generator = magicface" in result.output
    assert (ROW in result.output.split("failed:")[-1]) is listed


def test_the_identity_check_shows_its_arcface_file_dlib_standing_in(tmp_path: Path) -> None:
    filters = {"name": "filters", "identity_similarity": True, "arcface_model": str(tmp_path / "w600k_r50.onnx")}
    checks = run_checks(recipe_from_dict({"identities": {"bank": "builtin"}, "filters": filters}))
    (row,) = [c for c in checks if c.name == "model arcface-r50"]
    assert row.ok and row.warning and "dlib's face descriptor (threshold 0.9)" in row.detail
    assert "filters.identity_model = 'auto'" in row.detail and "factory models pull arcface-r50" in row.detail
