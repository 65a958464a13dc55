"""The fineface generator on tiny random-weight models saved in the FineFace release layout.

The models are built here (``bench.tiny_models.build_tiny_fineface``: the files written
the way the release's train.py writes them) and loaded only through the stage's own loading
code. Agreement with the release code was measured once, outside the repository, on tiny
random weights in the real layout (1024-wide tokens and a 64-feature AU encoder for the AU
variant, as the release's AUEncoder() is hard-wired; 768 and 16 FaceID tokens for the FaceID
variant), with the release's own pins (diffusers 0.27.2, transformers 4.41.0, peft 0.7.0,
huggingface_hub 0.23.0) reading the files from an offline hub cache::

    cd <worktree> && PYTHONPATH=. .venv/bin/python /tmp/ffcheck/build.py        # tiny models + hub cache
    cd /tmp/ffcheck && HF_HUB_OFFLINE=1 HF_HUB_CACHE=/tmp/ffcheck/hub /tmp/ffrel/bin/python run_release.py
    cd <worktree> && PYTHONPATH=. .venv/bin/python /tmp/ffcheck/run_ours.py     # max |ours - release|

    AU embedding [uncond, cond]                          0
    AU noise, lora_scale=0 vs release FineFacePipeline   7.2e-07  (its loader applies no LoRA: 0 LoRA layers)
    images, 3 DDIM steps, CFG 7.5 (uint8 levels)         1
    AU noise, default LoRA (adapter) vs train.py model   9.5e-07  (LoRA at alpha 8 / rank, as trained)
    AU noise, default LoRA (fused) vs train.py model     7.2e-07
    FaceID AU embedding / identity tokens                0 / 0
    FaceID noise prediction (FineFaceIPAdapterPipeline)  1.4e-06
    sensitivity: default vs release 0.31, FaceID with au_scale=0 vs release 0.67

The pinned slice below guards that agreement against regressions.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.tiny_models import build_tiny_fineface
from manifests.bank import open_bank
from stages import stage_class
from stages.base import StageContext, StageError
from stages.generators.fineface.prompt import build_prompt, check_template, person_phrase
from stages.generators.fineface.stage import FACEID_LICENCE, LICENCE, FineFaceConfig, FineFaceGenerator
from tests.stages.generators.planned import PINNED_PLAN, check_pinned_row, check_planned_record, max_level_diff

SIZE = 64
BASE, WEIGHTS = "stable-diffusion-2-1-base", "fineface"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_fineface(tmp_path_factory.mktemp("tiny_fineface") / "models", faceid=True)


def _generator(models: Path, bank: Any = None, **options: Any) -> FineFaceGenerator:
    defaults = {"base_dir": str(models / BASE), "weights_dir": str(models / WEIGHTS), "steps": 2}
    gen = FineFaceGenerator(
        FineFaceConfig(**{**defaults, **options}),
        StageContext(run_dir=Path("."), image_size=SIZE, identity_bank=bank),
    )
    gen.setup()
    return gen


@pytest.fixture(scope="module")
def generator(models: Path) -> FineFaceGenerator:
    return _generator(models)


def _records(n: int, seed0: int = 100, planned: list[int] | None = None) -> list[dict[str, Any]]:
    return [
        {
            "key": f"k{i}",
            "description": f"a photo of a face smiling, jaw drop {i}",
            "seed": seed0 + i,
            "planned_intensity": planned
            if planned is not None
            else [(i + k) % 6 if k % 3 == 0 else 0 for k in range(12)],
            "identity_id": ("builtin-astronaut", "builtin-grace-hopper")[i % 2],
            "ethnicity": "east_asian",
            "age_band": "young_adult",
            "gender": "female",
        }
        for i in range(n)
    ]


def test_images_planned_labels_and_licence(generator: FineFaceGenerator) -> None:
    batch = generator.process(_records(3))
    for record in batch:
        check_planned_record(record, SIZE, "fineface")
    assert "Apache-2.0" in generator.licence and "RAIL++-M" in generator.licence
    assert FineFaceGenerator.licence == LICENCE


def test_pinned_output_slice(generator: FineFaceGenerator) -> None:
    check_pinned_row(generator.process(_records(1, planned=PINNED_PLAN))[0], PINNED_ROW)


def test_sample_does_not_depend_on_its_batch(generator: FineFaceGenerator) -> None:
    batch = generator.process(_records(8))
    alone = generator.process([_records(8)[5]])[0]
    assert (
        max_level_diff(alone["image"], batch[5]["image"]) <= 3
    )  # float reductions differ with batch size, a few 1/255


def test_au_condition_changes_the_image(models: Path, generator: FineFaceGenerator) -> None:
    zero = generator.process(_records(1, planned=[0] * 12))[0]["image"]
    active = generator.process(_records(1, planned=[0, 0, 5, 0, 3, 0, 5, 0, 0, 0, 4, 2]))[0]["image"]
    assert np.abs(zero.astype(int) - active.astype(int)).mean() > 1.0
    # and au_scale = 0 removes the AU attention: the AU vector no longer matters
    off = _generator(models, au_scale=0.0)
    a = off.process(_records(1, planned=[0] * 12))[0]["image"]
    b = off.process(_records(1, planned=[0, 0, 5, 0, 3, 0, 5, 0, 0, 0, 4, 2]))[0]["image"]
    assert max_level_diff(a, b) == 0


def test_lora_scale_release_trained_and_fused(models: Path, generator: FineFaceGenerator) -> None:
    assert generator.pipe.lora_scale == pytest.approx(8 / 4)  # alpha 8 over the tiny LoRA's rank 4
    record = _records(1)
    trained = generator.process([dict(record[0])])[0]["image"]
    adapter = _generator(models, fuse_lora=False).process([dict(record[0])])[0]["image"]
    release = _generator(models, lora_scale=0.0)
    assert release.pipe.lora_scale == 0.0
    assert max_level_diff(trained, adapter) <= 1  # fusing changes rounding only
    assert np.abs(trained.astype(int) - release.process([dict(record[0])])[0]["image"].astype(int)).mean() > 1.0


def test_prompt_from_template_and_demographics(generator: FineFaceGenerator, monkeypatch: pytest.MonkeyPatch) -> None:
    record = _records(1)[0]
    assert person_phrase(record) == "a young East Asian woman"
    assert (
        person_phrase({"age_band": "elderly", "gender": "female", "ethnicity": "latino"}) == "an elderly Latina woman"
    )
    assert person_phrase({}) == "a person"
    assert build_prompt("{age}|{ethnicity}|{gender}|{description}", record).startswith("young adult|East Asian|female|")
    with pytest.raises(ValueError, match=r"unknown slot.*\{mood\}"):
        check_template("{mood} {description}")
    with pytest.raises(ValueError, match="description"):
        FineFaceConfig(prompt_template="{person}")
    seen: list[list[str]] = []
    real = generator.pipe.pipe

    def spy(**kwargs: Any) -> Any:
        seen.append(kwargs["prompt"])
        return real(**kwargs)

    monkeypatch.setattr(generator.pipe, "pipe", spy)
    generator.process(_records(2))
    assert seen == [
        [f"a closeup photo of a young East Asian woman, a photo of a face smiling, jaw drop {i}" for i in range(2)]
    ]


@pytest.mark.parametrize(
    "remove",
    [
        f"{BASE}/model_index.json",
        f"{BASE}/unet",
        f"{BASE}/text_encoder",
        f"{WEIGHTS}/attn_processors.ckpt",
        f"{WEIGHTS}/pytorch_lora_weights.safetensors",
        f"{WEIGHTS}/au_encoder.ckpt",
    ],
)
def test_missing_file_names_it_and_the_layout(models: Path, tmp_path: Path, remove: str) -> None:
    broken = tmp_path / "models"
    for part in (BASE, WEIGHTS):
        shutil.copytree(models / part, broken / part)
    target = broken / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(StageError) as err:
        _generator(broken)
    message = str(err.value)
    assert str(target) in message
    for part in (
        "model_index.json, unet/",
        "attn_processors.ckpt",
        "pytorch_lora_weights.safetensors",
        "au_encoder.ckpt",
    ):
        assert part in message  # the whole expected layout


def _swap(models: Path, tmp_path: Path, name: str, data: Any) -> Path:
    broken = tmp_path / "models"
    for part in (BASE, WEIGHTS):
        shutil.copytree(models / part, broken / part)
    if isinstance(data, bytes):
        (broken / WEIGHTS / name).write_bytes(data)
    else:
        torch.save(data, broken / WEIGHTS / name)
    return broken


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("attn_processors.ckpt", b"not a checkpoint", "cannot be read as a state dict"),
        (
            "attn_processors.ckpt",
            {"down_blocks.9.attn2.processor.au_to_k.weight": torch.zeros(2, 2)},
            "lacks AU weights",
        ),
        (
            "au_encoder.ckpt",
            {"au_encoder.weight": torch.zeros(64, 12), "au_encoder.bias": torch.zeros(64)},
            "text width",
        ),
        ("au_encoder.ckpt", {"weight": torch.zeros(16, 12)}, "no tensor 'au_encoder.weight'"),
        ("pytorch_lora_weights.safetensors", b"\x00" * 16, "not a safetensors file"),
    ],
)
def test_mismatched_file_names_it(models: Path, tmp_path: Path, name: str, data: Any, match: str) -> None:
    broken = _swap(models, tmp_path, name, data)
    with pytest.raises(StageError, match=match) as err:
        _generator(broken)
    assert str(broken / WEIGHTS / name) in str(err.value) and "FineFace expects" in str(err.value)


def test_lora_for_another_unet_is_named(models: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    broken = _swap(models, tmp_path, "au_encoder.ckpt", torch.load(models / WEIGHTS / "au_encoder.ckpt"))
    save_file(
        {"unet.mid_block.no_such.to_q.lora_A.weight": torch.zeros(4, 8)},
        str(broken / WEIGHTS / "pytorch_lora_weights.safetensors"),
    )
    with pytest.raises(StageError, match=r"does not fit this base UNet"):
        _generator(broken)


def test_faceid_variant_uses_the_bank_and_records_its_licence(models: Path) -> None:
    gen = _generator(
        models,
        bank=open_bank("builtin"),
        identity="faceid",
        base_dir=str(models / "realistic-vision-v4"),
        faceid_file=str(models / "ip-adapter-faceid-portrait" / "ip-adapter-faceid-portrait-v11_sd15.bin"),
        arcface_model=str(models / "w600k_r50.onnx"),
    )
    assert gen.licence == FACEID_LICENCE and "non-commercial" in gen.licence
    records = _records(2) + [{**_records(1)[0], "identity_id": "not-in-the-bank"}]
    gen.process(records)
    assert [r.get("dropped_by") for r in records] == [None, None, "fineface"]
    assert "not-in-the-bank" in records[2]["drop_reason"]
    # two identities, same plan otherwise: the identity tokens change the image
    same = [{**r, "planned_intensity": [0] * 12, "seed": 7} for r in _records(2)]
    gen.process(same)
    assert np.abs(same[0]["image"].astype(int) - same[1]["image"].astype(int)).mean() > 0.5
    with pytest.raises(StageError, match=r"identities\.bank"):
        _generator(models, identity="faceid")


def test_timing_and_compile_padding(
    models: Path, generator: FineFaceGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator.process(_records(2))
    timing = generator.last_timing
    assert timing["batch_size"] == 2 and 0.0 < timing["model_s"] <= timing["total_s"]
    monkeypatch.setattr(torch, "compile", lambda module, **kw: module)
    gen = _generator(models, batch_size=3, compile=True)
    seeds: list[list[int]] = []
    real = gen.pipe.pipe

    def spy(**kwargs: Any) -> Any:
        seeds.append([g.initial_seed() for g in kwargs["generator"]])
        return real(**kwargs)

    monkeypatch.setattr(gen.pipe, "pipe", spy)
    out = gen.process(_records(2))
    assert seeds == [[100, 101, 101]] and len(out) == 2  # padded with the last sample, then discarded


def test_registered_and_light_to_import() -> None:
    assert stage_class("fineface") is FineFaceGenerator and FineFaceGenerator.kind == "generator"
    code = (
        "import sys; import stages.generators.fineface.stage; "
        "print(sorted(m for m in ('torch', 'diffusers', 'peft', 'transformers') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# Red channel, row 30, columns 28-35, of the tiny model's image for one fixed plan (seed 100, 2 steps).
PINNED_ROW = [174, 158, 30, 88, 95, 196, 99, 100]
