"""The magicface generator on tiny random-weight models saved in the MagicFace release layout.

The models are built here (``bench.tiny_models.build_tiny_magicface``: the two UNets saved
as the release's classes save them) and loaded only through the stage's own loading code.
The identities are the builtin bank's (an astronaut who smiles, ``AU12=3 AU25=5``, and
Grace Hopper, neutral), so the relative AU input is checked against a recorded expression.

Agreement with the release code was measured once, outside the repository, on these tiny
random weights in the real layout: the release's own ``MgPipeline``, ``UNetID2DConditionModel``
and ``UNetDeno2DConditionModel`` (weimengting/MagicFace at its published commit) under its pin
diffusers 0.25.1 (transformers 4.42.4, huggingface_hub 0.24.7, numpy 1.26.4 in a side folder),
loading with its own ``ignore_mismatched_sizes=True``; the same 64 px Grace Hopper crop and
stand-in bg (PNG), the same AU vector and seed (a one-element generator list), 3 UniPC steps,
guidance 1.5, CPU float32. Two adaptations in the harness, both outside the compared code: its
hard-wired ``au_aug_mlp = Linear(12, 1280)`` is swapped for the file's ``Linear(12, 128)`` (the
tiny time-embedding width; its lenient loader had silently re-initialised it), and the CLIP
text encoder's tensors are loaded under transformers 4.42's key prefix::

    cd <worktree> && PYTHONPATH=$PWD .venv/bin/python /tmp/mfrel/ours.py
    cd /tmp/mfrel && PYTHONPATH=/tmp/mfrel/site:/tmp/mfrel/release .venv/bin/python release.py

    first-step noise prediction [cond, uncond], max |ours - release|   2.4e-06 / 2.5e-06 (values up to 1.4 / 1.6)
    image after 3 steps (uint8 levels)                                 max 1, mean 0.08 / 0.09

The pinned slice below guards that agreement against regressions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from bench.tiny_models import build_tiny_magicface
from manifests.bank import open_bank
from stages import stage_class
from stages.base import ModelFilesError, StageContext, StageError
from stages.generators.magicface.source import CROP_SCALE, face_crop, landmark_hull_bg
from stages.generators.magicface.stage import LICENCE, MagicFaceConfig, MagicFaceGenerator, relative_aus
from stages.nets.bisenet import BiSeNet
from tests.stages.generators.planned import PINNED_PLAN, check_pinned_row, check_planned_record, max_level_diff

SIZE = 64
SD, WEIGHTS = "stable-diffusion-v1-5", "magicface"
SMILE = [0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 5, 0]  # the astronaut's recorded expression


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_magicface(tmp_path_factory.mktemp("tiny_magicface") / "models")


def _generator(models: Path, **options: Any) -> MagicFaceGenerator:
    defaults = {"sd_dir": str(models / SD), "weights_dir": str(models / WEIGHTS), "steps": 2, "bg": "landmark-hull"}
    gen = MagicFaceGenerator(
        MagicFaceConfig(**{**defaults, **options}),
        StageContext(run_dir=Path("."), image_size=SIZE, identity_bank=open_bank("builtin")),
    )
    gen.setup()
    return gen


@pytest.fixture(scope="module")
def generator(models: Path) -> MagicFaceGenerator:
    return _generator(models)


def _records(n: int, seed0: int = 100, planned: list[int] | None = None) -> list[dict[str, Any]]:
    return [
        {
            "key": f"k{i}",
            "seed": seed0 + i,
            "planned_intensity": planned
            if planned is not None
            else [(i + k) % 6 if k % 3 == 0 else 0 for k in range(12)],
            "identity_id": ("builtin-astronaut", "builtin-grace-hopper")[i % 2],
        }
        for i in range(n)
    ]


def test_images_planned_labels_and_licence(generator: MagicFaceGenerator) -> None:
    batch = generator.process(_records(3))
    for record in batch:
        check_planned_record(record, SIZE, "magicface")
    assert "Apache-2.0" in generator.licence and "Open RAIL-M" in generator.licence
    assert MagicFaceGenerator.licence == LICENCE


def test_pinned_output_slice(generator: MagicFaceGenerator) -> None:
    check_pinned_row(generator.process(_records(1, planned=PINNED_PLAN))[0], PINNED_ROW)


def test_sample_does_not_depend_on_its_batch(generator: MagicFaceGenerator) -> None:
    batch = generator.process(_records(6))
    alone = generator.process([_records(6)[3]])[0]
    assert (
        max_level_diff(alone["image"], batch[3]["image"]) <= 3
    )  # float reductions differ with batch size, a few 1/255


def test_identity_prepared_once_across_batches(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _generator(models, batch_size=2)
    calls: list[int] = []
    real = gen.pipe.prepare
    monkeypatch.setattr(gen.pipe, "prepare", lambda crop, bg: calls.append(1) or real(crop, bg))
    gen.process(_records(5))
    gen.process(_records(4, seed0=7))
    assert len(calls) == 2  # two identities, nine samples, five denoiser calls


def _bank_folder(root: Path) -> Path:
    """A bank folder holding the builtin Grace Hopper portrait (so the disk cache has a home)."""
    root.mkdir(parents=True)
    rec = open_bank("builtin").get("builtin-grace-hopper")
    Image.fromarray(open_bank("builtin").image(rec.identity_id)).save(root / "gh.png")
    (root / "identities.csv").write_text(
        "identity_id,image,ethnicity,age_band,gender,source,licence,expression\n"
        f"gh,gh.png,{rec.ethnicity},{rec.age_band},{rec.gender},test,public-domain,neutral\n"
    )
    return root


def _bisenet_generator(models: Path, bank_dir: Path, weights: Path) -> MagicFaceGenerator:
    config = MagicFaceConfig(
        sd_dir=str(models / SD), weights_dir=str(models / WEIGHTS), steps=2, bisenet_file=str(weights), parse_size=64
    )
    gen = MagicFaceGenerator(
        config, StageContext(run_dir=Path("."), image_size=SIZE, identity_bank=open_bank(str(bank_dir)))
    )
    gen.setup()
    return gen


def test_bisenet_bg_when_its_file_is_there_cached_beside_the_bank(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "79999_iter.pth"
    torch.manual_seed(0)
    torch.save(BiSeNet().state_dict(), weights)
    bank_dir = _bank_folder(tmp_path / "bank")
    record = {"key": "k0", "seed": 5, "planned_intensity": [2] * 12, "identity_id": "gh"}
    gen = _bisenet_generator(models, bank_dir, weights)
    assert gen.bg == "bisenet" and f"BiSeNet face parsing from {weights}" in gen.licence_notice()
    first = gen.process([dict(record)])[0]
    (entry,) = (bank_dir / ".magicface-cache").glob("*-bisenet-64.npz")
    with np.load(entry) as cached:
        hull = landmark_hull_bg(cached["crop"], cached["landmarks"])
        assert cached["bg"].shape == (SIZE, SIZE, 3) and not np.array_equal(cached["bg"], hull)
    # With its memory emptied (as a fresh worker) it reads the crop and bg from disk: no face
    # detection, no parsing.
    gen._identity.cache_clear()
    monkeypatch.setattr(gen.parser, "parse", lambda crop: pytest.fail("parsed a cached identity"))
    monkeypatch.setattr("stages.faces.exemplar.exemplar_face", lambda image: pytest.fail("detected again"))
    assert np.array_equal(gen.process([dict(record)])[0]["image"], first["image"])


def test_bisenet_file_missing_is_named(models: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "nowhere" / "79999_iter.pth"
    options = {"sd_dir": str(models / SD), "weights_dir": str(models / WEIGHTS), "bisenet_file": str(missing)}
    context = StageContext(run_dir=Path("."), image_size=SIZE, identity_bank=open_bank("builtin"))
    with pytest.raises(ModelFilesError) as err:
        MagicFaceGenerator(MagicFaceConfig(**options, bg="bisenet"), context).preflight()
    assert str(missing) in str(err.value) and "factory models pull bisenet-face-parsing" in str(err.value)
    auto = MagicFaceGenerator(MagicFaceConfig(**options), context)
    with caplog.at_level("WARNING"):
        auto.preflight()
    assert auto.bg == "landmark-hull" and str(missing) in caplog.text and str(missing) in auto.licence_notice()
    no_sd = MagicFaceGenerator(MagicFaceConfig(**{**options, "sd_dir": str(tmp_path / "no-sd")}), context)
    with pytest.raises(ModelFilesError, match="factory models pull stable-diffusion-v1-5") as err:
        no_sd.preflight()
    assert str(tmp_path / "no-sd") in str(err.value)


def test_relative_aus_from_the_identity_own_expression(
    generator: MagicFaceGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[np.ndarray] = []
    pipe = generator.pipe
    real = pipe.__call__

    class Spy:  # the real pipe's attributes, its calls recorded
        def __getattr__(self, name: str) -> Any:
            return getattr(pipe, name)

    monkeypatch.setattr(generator, "pipe", Spy())

    def call(identities: Any, aus: np.ndarray, seeds: Any, **kw: Any) -> Any:
        seen.append(np.asarray(aus))
        return real(identities, aus, seeds, **kw)

    monkeypatch.setattr(Spy, "__call__", lambda self, *a, **kw: call(*a, **kw), raising=False)
    target = [2, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1, 0]
    generator.process(_records(2, planned=target))
    astronaut, hopper = seen[0]
    assert astronaut.tolist() == relative_aus(target, SMILE).tolist() == [2, 0, 0, 0, 0, 0, 1, 0, 0, 0, -4, 0]
    assert hopper.tolist() == target  # neutral: delta = target


def test_au_vector_changes_the_image(generator: MagicFaceGenerator) -> None:
    hopper = {"identity_id": "builtin-grace-hopper"}
    same = generator.process([{**_records(1, planned=[0] * 12)[0], **hopper}])[0]["image"]
    edited = generator.process([{**_records(1, planned=[0, 0, 5, 0, 3, 0, 5, 0, 0, 0, 4, 2])[0], **hopper}])[0]
    assert np.abs(same.astype(int) - edited["image"].astype(int)).mean() > 1.0


def test_unusable_identity_drops_only_its_samples(generator: MagicFaceGenerator) -> None:
    records = _records(2) + [{**_records(1)[0], "identity_id": "not-in-the-bank"}]
    generator.process(records)
    assert [r.get("dropped_by") for r in records] == [None, None, "magicface"]
    assert "not-in-the-bank" in records[2]["drop_reason"] and "image" not in records[2]


def test_face_crop_and_bg_stand_in() -> None:
    image = np.full((200, 300, 3), 200, np.uint8)
    landmarks = np.zeros((68, 2), np.float32)
    angles = np.linspace(np.pi, 0, 17)
    landmarks[:17] = np.stack([150 - 40 * np.cos(angles), 100 + 40 * np.sin(angles)], axis=1)  # jaw, U-shaped
    landmarks[17:27] = np.stack([np.linspace(115, 185, 10), np.full(10, 80)], axis=1)  # brows
    crop, moved = face_crop(image, (110, 60, 190, 140), landmarks, 96)
    assert crop.shape == (96, 96, 3)
    assert moved[8].tolist() == pytest.approx([48.0, 48.0 + 40 * 96 / (CROP_SCALE * 80)], abs=0.5)
    bg = landmark_hull_bg(crop, moved)
    assert bg[40, 48].tolist() == [0, 0, 0]  # inside the face polygon
    assert bg[2, 2].tolist() == [200, 200, 200]  # background kept
    x, y = np.round(moved[0]).astype(int)
    assert bg[y, x].tolist() == [127, 0, 255]  # first jaw dot, rainbow's first colour


@pytest.mark.parametrize(
    "remove",
    [
        f"{SD}/vae",
        f"{SD}/tokenizer",
        f"{WEIGHTS}/ID_enc/config.json",
        f"{WEIGHTS}/denoising_unet/diffusion_pytorch_model.safetensors",
    ],
)
def test_missing_file_names_it_and_the_pull_command(models: Path, tmp_path: Path, remove: str) -> None:
    broken = tmp_path / "models"
    for part in (SD, WEIGHTS):
        shutil.copytree(models / part, broken / part)
    target = broken / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(StageError) as err:
        _generator(broken)
    message = str(err.value)
    assert str(target) in message and "factory models pull magicface" in message
    assert "ID_enc" in message and "denoising_unet" in message  # the whole expected layout


def _rewrite_denoiser(models: Path, tmp_path: Path, change: Any) -> Path:
    broken = tmp_path / "models"
    for part in (SD, WEIGHTS):
        shutil.copytree(models / part, broken / part)
    path = broken / WEIGHTS / "denoising_unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    change(state)
    save_file(state, str(path))
    return path


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: s.update({"au_aug_mlp.weight": torch.zeros(1280, 12)}), "wrongly shaped"),
        (lambda s: s.pop("au_aug_mlp.bias"), "lacks"),
        (lambda s: s.update({"au_mlp.0.weight": torch.zeros(4, 12)}), "unknown"),
        (lambda s: s.update({"conv_in.weight": s["conv_in.weight"][:, :4].contiguous()}), "wrongly shaped"),
    ],
)
def test_mismatched_unet_is_refused_naming_the_file(models: Path, tmp_path: Path, change: Any, match: str) -> None:
    path = _rewrite_denoiser(models, tmp_path, change)
    with pytest.raises(StageError, match=match) as err:
        _generator(path.parents[2])
    assert str(path) in str(err.value)


def test_bad_config_and_missing_bank_are_named(models: Path, tmp_path: Path) -> None:
    broken = tmp_path / "models"
    for part in (SD, WEIGHTS):
        shutil.copytree(models / part, broken / part)
    config = broken / WEIGHTS / "ID_enc" / "config.json"
    config.write_text(json.dumps([1, 2]))
    with pytest.raises(StageError, match="not a UNet config") as err:
        _generator(broken)
    assert str(config) in str(err.value)
    gen = MagicFaceGenerator(MagicFaceConfig(), StageContext(run_dir=Path("."), image_size=SIZE))
    with pytest.raises(StageError, match=r"identities\.bank"):
        gen.setup()


def test_registered_and_light_to_import() -> None:
    assert stage_class("magicface") is MagicFaceGenerator and MagicFaceGenerator.kind == "generator"
    code = (
        "import sys; import stages.generators.magicface.stage; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# Red channel, row 30, columns 28-35, of the tiny model's image for one fixed plan (seed 100, 2 steps).
PINNED_ROW = [140, 110, 29, 119, 126, 233, 131, 135]


RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "mifa-1m-multi-identity.toml"


def test_plan_repeats_each_bank_identity_with_its_own_au_vectors() -> None:
    from factory.plan import Planner
    from factory.recipe import recipe_from_dict

    recipe = recipe_from_dict(
        {"dataset": {"target": 12, "shard_size": 6}, "identities": {"expressions_per_identity": 3}}
    )
    planner = Planner(recipe, open_bank("builtin").records())
    rows = planner.shard(0).to_pylist() + planner.shard(1).to_pylist()
    ids = [r["identity_id"] for r in rows]
    a, h = "builtin-astronaut", "builtin-grace-hopper"
    assert ids == [a, a, a, h, h, h] * 2  # identity-major, wrapping round the bank
    assert {r["identity_match"] for r in rows} == {"exact"}
    assert rows[3]["age_band"] == "elderly"  # the bank's demographics, not a drawn cell
    hopper = [tuple(r["planned_intensity"]) for r in rows if r["identity_id"] == h]
    assert len(set(hopper)) > 1  # one identity, different expressions


def test_multi_identity_recipe_plans_identities_x_expressions(capsys: pytest.CaptureFixture[str]) -> None:
    from factory.cli import edge

    assert edge.run(["plan", str(RECIPE), "--target", "200"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "multi-identity: 10 identities (bank not there yet) x 20 expressions per identity = 200 samples" in printed


def test_multi_identity_recipe_chains_and_round_trips() -> None:
    from factory.recipe import load_recipe, recipe_from_dict
    from stages.pipeline import Pipeline

    recipe = load_recipe(RECIPE)
    Pipeline.check(recipe.stage_specs())  # every stage's reads written by an earlier one
    again = recipe_from_dict(json.loads(json.dumps(recipe.model_dump(mode="json"))), source="run.json")
    assert again == recipe and recipe.identities.expressions_per_identity == 20
    assert recipe.generator.name == "magicface" and recipe.generator.options()["guidance_scale"] == 1.5
