"""Bad run-time inputs, one row per case: model files, banks, endpoints, run folders, damaged
shards. Each row asserts exit code, one line naming the culprit, no traceback, Ray never
started, and nothing written or changed (the folder hashed before and after)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import ray
from PIL import Image

from factory.cli import edge
from factory.engine.rundir import RunDir, RunError
from factory.recipe import Recipe, load_recipe
from manifests.bank import open_bank
from tests.cli.conftest import error_line
from tests.commands.conftest import build, demo_recipe


def folder_hash(root: Path) -> str:
    """Names and contents of every file under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def recipe_text(out: Path, generator: str, *, bank: str = "builtin", prompt: str = "") -> str:
    return (
        f'[dataset]\nname = "x"\ntarget = 4\nshard_size = 4\nout = "{out}"\n'
        f'[identities]\nbank = "{bank}"\n[generator]\n{generator}\n{prompt}'
    )


SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def sd_folder(root: Path, *, parts: tuple[str, ...] = SD_PARTS) -> Path:
    """A diffusers folder's layout (no weights: the preflight checks the layout only)."""
    root.mkdir(parents=True)
    index = {p: ["diffusers", "X"] for p in SD_PARTS}
    (root / "model_index.json").write_text(json.dumps(index))
    for part in parts:
        (root / part).mkdir()
    return root


def bank_folder(root: Path, image: bytes | None, name: str = "a.png") -> Path:
    """A one-identity bank whose image holds ``image`` (``None``: the file is absent)."""
    root.mkdir(parents=True)
    row = f"{name.split('.')[0]},{name},white,adult,female,me,CC0"
    (root / "identities.csv").write_text(f"identity_id,image,ethnicity,age_band,gender,source,licence\n{row}\n")
    if image is not None:
        (root / name).write_bytes(image)
    return root


def _maugen(tmp: Path, missing: str) -> str:
    root = tmp / "mg"
    sd_folder(root / "stable-diffusion-inpainting")
    for name in ("maugen_unet.pth", "au_cue.pt", "img2text_exp.pth", "msid_112.pth"):
        if name != missing:
            (root / name).write_bytes(b"x")
    return f'name = "maugen"\ncheckpoint_dir = "{root}"'


def _fineface(tmp: Path, missing: str) -> str:
    base = sd_folder(tmp / "sd21")
    weights = tmp / "ff"
    weights.mkdir()
    for name in ("attn_processors.ckpt", "pytorch_lora_weights.safetensors", "au_encoder.ckpt"):
        if name != missing:
            (weights / name).write_bytes(b"x")
    return f'name = "fineface"\nbase_dir = "{base}"\nweights_dir = "{weights}"'


# (case id, make(tmp) -> recipe text's generator lines and bank, words the line must hold)
PREFLIGHT: list[tuple[str, Callable[[Path], tuple[str, str]], tuple[str, ...]]] = [
    ("diffusers-no-folder", lambda t: ('name = "diffusers"\npipeline = "/nope/sd15"', "builtin"),
     ("/nope/sd15", "generator.pipeline", "factory models pull stable-diffusion-v1-5")),
    ("diffusers-no-index", lambda t: (f'name = "diffusers"\npipeline = "{(t / "e").mkdir() or t / "e"}"', "builtin"),
     ("model_index.json", "generator.pipeline")),
    ("diffusers-no-unet", lambda t: (f'name = "diffusers"\npipeline = "{sd_folder(t / "sd", parts=("vae",))}"',
                                     "builtin"), ("unet", "models pull")),
    ("maugen-no-folder", lambda t: ('name = "maugen"\ncheckpoint_dir = "/nope/mg"', "builtin"),
     ("/nope/mg", "generator.checkpoint_dir")),
    ("maugen-no-unet", lambda t: (_maugen(t, "maugen_unet.pth"), "builtin"),
     ("maugen_unet.pth", "generator.checkpoint_dir")),
    ("maugen-no-au-cue", lambda t: (_maugen(t, "au_cue.pt"), "builtin"), ("au_cue.pt", "generator.checkpoint_dir")),
    ("maugen-no-bank", lambda t: (_maugen(t, ""), "none"), ("maugen", "identities.bank")),
    ("fineface-no-base", lambda t: ('name = "fineface"\nbase_dir = "/nope/sd21"', "builtin"),
     ("/nope/sd21", "factory models pull stable-diffusion-2-1-base")),
    ("fineface-no-lora", lambda t: (_fineface(t, "pytorch_lora_weights.safetensors"), "builtin"),
     ("pytorch_lora_weights.safetensors", "factory models pull fineface")),
    ("fineface-no-au-encoder", lambda t: (_fineface(t, "au_encoder.ckpt"), "builtin"),
     ("au_encoder.ckpt", "factory models pull fineface")),
    ("fineface-faceid-no-bank", lambda t: ('name = "fineface"\nidentity = "faceid"', "none"),
     ("faceid", "identities.bank")),
    ("bank-not-an-image", lambda t: ('name = "warp"', str(bank_folder(t / "bank", b"plain text"))),
     ("a.png", "not an image", "identities.csv")),
    ("bank-image-missing", lambda t: ('name = "warp"', str(bank_folder(t / "bank", None))), ("a.png",)),
    ("bank-image-truncated", lambda t: ('name = "warp"', str(bank_folder(t / "bank", b"\x89PNG\r\n\x1a\n\x00"))),
     ("a.png",)),
    ("bank-jpeg-named-png-garbage", lambda t: ('name = "warp"', str(bank_folder(t / "bank", b"\xff\xd8\xff", "b.jpg"))),
     ("b.jpg",)),
]  # fmt: skip


@pytest.mark.parametrize(("case", "make", "says"), PREFLIGHT, ids=[row[0] for row in PREFLIGHT])
def test_a_model_or_bank_problem_is_refused_before_ray_and_before_the_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, make: Callable, says: tuple[str, ...]
) -> None:
    generator, bank = make(tmp_path)
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text(tmp_path / "run", generator, bank=bank))
    before = folder_hash(tmp_path)
    assert edge.run(["build", str(recipe), "--gpus", "0"]) == 2
    line = error_line(capsys)
    assert all(word in line for word in says), line
    assert not ray.is_initialized()
    assert folder_hash(tmp_path) == before


def test_an_unreachable_llm_with_on_failure_drop_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = '[prompt]\nname = "prompt"\nbackend = "llm"\nbase_url = "http://127.0.0.1:1/v1"\non_failure = "drop"\n'
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text(tmp_path / "run", 'name = "warp"', prompt=prompt))
    before = folder_hash(tmp_path)
    assert edge.run(["build", str(recipe), "--gpus", "0"]) == 2
    line = error_line(capsys)
    assert "127.0.0.1:1" in line and "prompt.on_failure" in line
    assert not ray.is_initialized()
    assert folder_hash(tmp_path) == before


def _started(tmp_path: Path, generator: str) -> tuple[RunDir, Recipe]:
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text(recipe_text(tmp_path / "run", generator))
    recipe = load_recipe(recipe_file)
    return RunDir(tmp_path / "run", "x"), recipe


def test_a_run_with_no_committed_shard_takes_a_changed_recipe_and_records_the_change(tmp_path: Path) -> None:
    run, old = _started(tmp_path, 'name = "diffusers"\npipeline = "/nope/sd15"')
    run.start(old, None)
    (run.plans / "x-000000.plan.parquet").write_bytes(b"planned by the old recipe")
    run.record_failure(0, "diffusers pipeline folder /nope/sd15 does not exist")
    _, new = _started(tmp_path, 'name = "warp"')
    info = run.start(new, None)
    recorded = json.loads(run.run_json.read_text())
    assert recorded == info and recorded["recipe"]["generator"]["name"] == "warp"
    assert recorded["fingerprint"] == new.fingerprint()
    [change] = recorded["recipe_changes"]
    assert "generator.name" in change["fields"] and change["previous_fingerprint"] == old.fingerprint()
    assert not list(run.plans.iterdir()) and run.failures() == {}


def test_a_run_with_a_committed_shard_still_refuses_a_changed_recipe(tmp_path: Path) -> None:
    run, old = _started(tmp_path, 'name = "diffusers"\npipeline = "/nope/sd15"')
    run.start(old, None)
    (run.shards / "other-000000.stats.json").write_text("{}")  # any dataset name's commit counts
    _, new = _started(tmp_path, 'name = "warp"')
    with pytest.raises(RunError, match="started with a different recipe; differing fields: generator"):
        run.start(new, None)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.subprocess
def test_following_the_advice_into_the_same_out_builds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A first start that failed after run.json (an earlier recipe), then a bank image that is not
    an image: exit 2 before Ray; replacing the image as told and rerunning into the same --out
    builds, with the earlier recipe's change recorded."""
    out = tmp_path / "run"
    recipe = demo_recipe(out, tmp_path / "demo.toml")
    text = recipe.read_text().replace("target = 13", "target = 4")
    recipe.write_text(text.replace('bank = "builtin"', f'bank = "{bank_folder(tmp_path / "bank", b"not a png")}"'))
    earlier = load_recipe(recipe, seed=1)
    RunDir(out, earlier.dataset.name).start(earlier, None)
    assert edge.run(["build", str(recipe), "--gpus", "0", "--quiet"]) == 2
    assert "a.png" in error_line(capsys) and not ray.is_initialized()
    Image.fromarray(open_bank("builtin").image("builtin-astronaut")).save(tmp_path / "bank" / "a.png")
    result = build(recipe, "--gpus", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = json.loads((out / "run.json").read_text())
    assert "dataset.seed" in recorded["recipe_changes"][0]["fields"]
    assert (out / "index.json").is_file()
