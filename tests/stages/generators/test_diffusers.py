"""The diffusers generator on a tiny random-weight SD pipeline, loaded through the real path."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.tiny_models import build_tiny_sd
from stages.base import StageContext, StageError
from stages.generators.diffusers import DiffusersConfig, DiffusersGenerator, check_pipeline_dir

SIZE = 64


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "pipeline")


def _generator(sd_dir: Path, **options: Any) -> DiffusersGenerator:
    cfg = DiffusersConfig(pipeline=str(sd_dir), steps=2, **options)
    gen = DiffusersGenerator(cfg, StageContext(run_dir=Path("."), image_size=SIZE))
    gen.setup()
    return gen


@pytest.fixture(scope="module")
def generator(sd_dir: Path) -> DiffusersGenerator:
    return _generator(sd_dir)


def _records(n: int, seed0: int = 100) -> list[dict[str, Any]]:
    planned = [[(i + k) % 6 if k % 3 == 0 else 0 for k in range(12)] for i in range(n)]
    return [
        {
            "description": f"a photo of a face smiling, jaw drop {i}",
            "seed": seed0 + i,
            "planned_intensity": planned[i],
            "identity_id": "none",
        }
        for i in range(n)
    ]


def test_images_and_planned_labels(generator: DiffusersGenerator) -> None:
    batch = generator.process(_records(3))
    for record in batch:
        image = record["image"]
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert image.std() > 1.0  # not a blank frame
        assert record["generator"] == "diffusers" and record["label_source"] == "planned"
        planned = record["planned_intensity"]
        assert record["generator_intensity"] == [float(x) for x in planned]
        assert record["generator_occurrence"] == [1.0 if x > 0 else 0.0 for x in planned]


def test_attention_runs_through_sdpa(generator: DiffusersGenerator) -> None:
    processors = generator.pipe.unet.attn_processors
    assert processors and {type(p).__name__ for p in processors.values()} == {"AttnProcessor2_0"}


def test_same_seed_same_image_other_seed_other_image(generator: DiffusersGenerator) -> None:
    first = generator.process(_records(1))
    again = generator.process(_records(1))
    other = generator.process(_records(1, seed0=900))
    assert np.array_equal(first[0]["image"], again[0]["image"])
    assert np.abs(first[0]["image"].astype(int) - other[0]["image"].astype(int)).mean() > 1.0


def test_sample_does_not_depend_on_its_batch(generator: DiffusersGenerator) -> None:
    batch = generator.process(_records(8))
    alone = generator.process([_records(8)[5]])[0]
    diff = np.abs(alone["image"].astype(int) - batch[5]["image"].astype(int))
    assert diff.max() <= 3  # float reductions differ with batch size, by a few 1/255 at most


def test_timing_reports_model_share(generator: DiffusersGenerator) -> None:
    generator.process(_records(2))
    generator.process(_records(4))
    timing = generator.last_timing  # the last call's, not the first's
    assert timing["batch_size"] == 4
    assert 0.0 < timing["model_s"] <= timing["total_s"]
    assert timing["overhead_s"] == pytest.approx(timing["total_s"] - timing["model_s"])


def test_chunks_larger_batches(sd_dir: Path) -> None:
    gen = _generator(sd_dir, batch_size=2)
    calls: list[int] = []
    real_pipe = gen.pipe

    def spy(**kwargs: Any) -> Any:
        calls.append(len(kwargs["prompt"]))
        return real_pipe(**kwargs)

    gen.pipe = spy
    batch = gen.process(_records(3))
    assert calls == [2, 1]
    assert all(r["image"].shape == (SIZE, SIZE, 3) for r in batch)


def test_compile_pads_to_fixed_batch(
    sd_dir: Path, generator: DiffusersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    compiled: list[Any] = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled.append(kw) or module)
    gen = _generator(sd_dir, batch_size=3, compile=True)
    assert compiled and compiled[0]["dynamic"] is False
    calls: list[list[int]] = []
    real_pipe = gen.pipe

    def spy(**kwargs: Any) -> Any:
        calls.append([g.initial_seed() for g in kwargs["generator"]])
        return real_pipe(**kwargs)

    gen.pipe = spy
    padded = gen.process(_records(2))
    assert calls == [[100, 101, 101]]  # padded with the last sample, then discarded
    assert len(padded) == 2
    plain = generator.process(_records(2))
    assert np.abs(padded[1]["image"].astype(int) - plain[1]["image"].astype(int)).max() <= 3


def test_scheduler_by_class_name(sd_dir: Path) -> None:
    gen = _generator(sd_dir, scheduler="EulerDiscreteScheduler")
    assert type(gen.pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert gen.process(_records(1))[0]["image"].shape == (SIZE, SIZE, 3)
    with pytest.raises(StageError, match=r"NoSuchScheduler.*DPMSolverMultistepScheduler"):
        _generator(sd_dir, scheduler="NoSuchScheduler")


def test_missing_pipeline_folder_names_path_and_layout(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(StageError) as err:
        _generator(missing)
    assert str(missing) in str(err.value)
    for part in ("model_index.json", "unet/", "vae/", "text_encoder/", "tokenizer/", "scheduler/"):
        assert part in str(err.value)


@pytest.mark.parametrize("remove", ["model_index.json", "unet", "tokenizer"])
def test_incomplete_pipeline_folder_names_missing_part(sd_dir: Path, tmp_path: Path, remove: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(sd_dir, broken)
    target = broken / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(StageError, match="expected layout") as err:
        check_pipeline_dir(broken)
    assert str(target) in str(err.value)


def test_corrupt_weights_are_a_stage_error(sd_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "corrupt"
    shutil.copytree(sd_dir, broken)
    for weights in (broken / "unet").glob("diffusion_pytorch_model*"):
        weights.write_bytes(b"not a checkpoint")
    with pytest.raises(StageError, match=re.escape(str(broken))):
        _generator(broken)


def test_registered_light_import_and_empty_sections_validate() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import stages.generators.diffusers, stages.generators.maugen.stage; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'dlib') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # heavy packages load in setup(), not at import

    from stages import stage_class
    from stages.generators.maugen.stage import MaugenConfig

    assert stage_class("diffusers") is DiffusersGenerator
    assert stage_class("diffusers").kind == stage_class("maugen").kind == "generator"
    assert DiffusersConfig.model_validate({}).steps == 30
    assert MaugenConfig.model_validate({}).checkpoint_dir == "models/maugen"
    with pytest.raises(ValueError, match="description"):
        MaugenConfig(prompt_template="no slot")


def test_dtype_per_device() -> None:
    import torch

    from stages.generators.base import resolve_dtype

    assert resolve_dtype("auto", "cuda") is torch.float16
    assert resolve_dtype("bfloat16", "cuda:1") is torch.bfloat16
    assert resolve_dtype("float16", "cpu") is torch.float32  # half precision is never used on CPU
