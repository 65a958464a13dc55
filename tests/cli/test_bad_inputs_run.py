"""Bad run-time inputs, one row per case: model files, banks, endpoints, run folders, damaged
shards. Each row asserts exit code, one line naming the culprit, no traceback, Ray never
started, and nothing written or changed (the folder hashed before and after)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from cluster.ray_cluster import AUTH_ADVICE, ClusterRequestError, connect, connect_failure
from factory.cli import edge
from factory.engine.rundir import RunDir, RunError
from factory.recipe import Recipe, load_recipe
from tests.cli.conftest import error_line


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


def _bank_with_folder_image(tmp: Path) -> Path:
    root = bank_folder(tmp / "bank", None)
    (root / "a.png").mkdir()
    return root


def _bank_row(tmp: Path, row: str) -> Path:
    root = tmp / "bank"
    root.mkdir()
    (root / "identities.csv").write_text(f"identity_id,image,ethnicity,age_band,gender,source,licence\n{row}\n")
    return root


def _bad_index(tmp: Path) -> Path:
    root = sd_folder(tmp / "sd")
    (root / "model_index.json").write_text("{not json")
    return root


def _maugen_no_index(tmp: Path) -> str:
    text = _maugen(tmp, "")
    (tmp / "mg" / "stable-diffusion-inpainting" / "model_index.json").unlink()
    return text


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
    ("bank-no-folder", lambda t: ('name = "warp"', str(t / "nope")), ("nope", "identities.bank")),
    ("bank-no-table", lambda t: ('name = "warp"', str((t / "b").mkdir() or t / "b")), ("identities.csv",)),
    ("bank-image-is-a-folder", lambda t: ('name = "warp"', str(_bank_with_folder_image(t))), ("a.png",)),
    ("bank-image-empty", lambda t: ('name = "warp"', str(bank_folder(t / "bank", b""))), ("a.png",)),
    ("bank-row-lacks-licence", lambda t: ('name = "warp"', str(_bank_row(t, "a,a.png,white,adult,female,me,"))),
     ("row 2", "licence")),
    ("bank-bad-gender", lambda t: ('name = "warp"', str(_bank_row(t, "a,a.png,white,adult,robot,me,CC0"))),
     ("gender", "robot")),
    ("diffusers-index-not-json", lambda t: (f'name = "diffusers"\npipeline = "{_bad_index(t)}"', "builtin"),
     ("model_index.json", "generator.pipeline")),
    ("maugen-base-no-index", lambda t: (_maugen_no_index(t), "builtin"),
     ("model_index.json", "generator.checkpoint_dir")),
    ("fineface-faceid-no-sd15-weights", lambda t: (_fineface(t, "") + '\nidentity = "faceid"', "builtin"),
     ("sd15_attn_processors.ckpt", "factory models pull fineface")),
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


def synthetic_run(tmp_path: Path, shards: int = 3) -> tuple[Path, RunDir]:
    """A committed run without Ray: run.json, plans, shard files whose stats match their sizes,
    and an index naming them (what `factory status` reads)."""
    run, recipe = _started(tmp_path, 'name = "warp"')
    run.start(recipe, None)
    run.build_lock.touch()  # every build leaves its lock file (status probes it)
    for shard in range(shards):
        paths = run.shard_paths(shard)
        pq.write_table(pa.table({"key": [f"{shard:06d}_00000"]}), paths.parquet)
        paths.tar.write_bytes(b"\0" * 1024)
        run.plan_path(shard).write_bytes(b"plan")
        stats = {"planned": 4, "accepted": 4, "drop_reasons": {}, "tar_bytes": 1024}
        paths.stats.write_text(json.dumps({**stats, "parquet_bytes": paths.parquet.stat().st_size}))
    index = {"shards": list(range(shards)), "accepted": 4 * shards, "target": 4}
    (run.root / "index.json").write_text(json.dumps(index))
    return run.root, run


def _random_bytes(path: Path, same_size: bool = True) -> None:
    size = path.stat().st_size if same_size else 17
    path.write_bytes(bytes((i * 97 + 13) % 256 for i in range(size)))


# (case id, damage(run) -> the file or words the line must name)
DAMAGE: list[tuple[str, Callable[[RunDir], str]]] = [
    ("manifest-random-bytes", lambda r: (_random_bytes(r.shard_paths(1).parquet), "x-000001.parquet")[1]),
    ("manifest-random-shorter", lambda r: (_random_bytes(r.shard_paths(1).parquet, False), "shard 1")[1]),
    ("manifest-deleted", lambda r: (r.shard_paths(2).parquet.unlink(), "shard 2")[1]),
    ("tar-truncated", lambda r: (r.shard_paths(0).tar.write_bytes(b"\0" * 10), "x-000000.tar")[1]),
    ("tar-deleted", lambda r: (r.shard_paths(0).tar.unlink(), "shard 0")[1]),
    ("stats-random-bytes", lambda r: (_random_bytes(r.shard_paths(1).stats), "x-000001.stats.json")[1]),
    ("stats-not-an-object", lambda r: (r.shard_paths(1).stats.write_text("[1, 2]"), "x-000001.stats.json")[1]),
    ("stats-deleted-but-indexed", lambda r: (r.shard_paths(2).stats.unlink(), "shard 2")[1]),
    ("stats-empty", lambda r: (r.shard_paths(0).stats.write_text(""), "x-000000.stats.json")[1]),
    ("index-json-random", lambda r: (_random_bytes(r.root / "index.json"), "index.json")[1]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "damage"), DAMAGE, ids=[row[0] for row in DAMAGE])
def test_status_names_a_damaged_shard_and_what_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, damage: Callable[[RunDir], str]
) -> None:
    root, run = synthetic_run(tmp_path)
    culprit = damage(run)
    before = folder_hash(tmp_path)
    capsys.readouterr()
    assert edge.run(["status", str(root)]) == 1
    line = error_line(capsys)
    assert culprit in line, line
    if case != "index-json-random":
        assert f"factory verify {root} --repair" in line and f"factory retry {root}" in line
    assert folder_hash(tmp_path) == before


def test_status_of_a_whole_run_exits_0_and_status_verify_says_it_verified(tmp_path: Path, capsys) -> None:
    root, _ = synthetic_run(tmp_path)
    assert edge.run(["status", str(root)]) == 0
    assert "complete" in capsys.readouterr().out


def test_a_cluster_that_refuses_the_token_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(**_: object) -> None:
        raise ray.exceptions.AuthenticationError("InvalidAuthToken: the token does not match")

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setattr(ray, "init", refused)
    monkeypatch.setattr("cluster.ray_cluster.probe_address", lambda address: None)  # no cluster to reach here
    with pytest.raises(ClusterRequestError) as info:
        connect("10.0.0.1:6379")
    message = str(info.value)
    assert "'10.0.0.1:6379' refused this driver: it has token authentication on (RAY_AUTH_MODE is unset" in message
    assert "RAY_AUTH_MODE=token" in message and "RAY_AUTH_TOKEN=" in message and "ray get-auth-token" in message


def test_a_failed_connection_names_the_auth_fix_unless_token_mode_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    timeout = ConnectionError("Failed to connect to GCS within 60 seconds")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert "check the address" in connect_failure("h:6379", timeout) and AUTH_ADVICE in connect_failure(
        "h:6379", timeout
    )
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert AUTH_ADVICE not in connect_failure("h:6379", timeout)


def _run_json(root: Path, text: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "run.json").write_text(text)


# (case id, command (RUN = the run folder), make(tmp, run) -> words the line must hold, exit code)
RUN_FOLDERS: list[tuple[str, list[str], Callable[[Path, Path], str], int]] = [
    ("status-no-such-folder", ["status", "RUN"], lambda t, r: "does not exist", 2),
    ("status-a-file", ["status", "RUN"], lambda t, r: (r.write_text("x"), "no run.json")[1], 2),
    ("status-empty-folder", ["status", "RUN"], lambda t, r: (r.mkdir(), "no run.json")[1], 2),
    ("status-run-json-random", ["status", "RUN"], lambda t, r: (_run_json(r, "\x00{{nope"), "run.json")[1], 2),
    ("status-run-json-a-list", ["status", "RUN"], lambda t, r: (_run_json(r, "[1]"), "run.json")[1], 2),
    ("status-run-json-no-recipe", ["status", "RUN"], lambda t, r: (_run_json(r, '{"dataset": "x"}'), "run.json")[1], 2),
    ("retry-no-run-json", ["retry", "RUN"], lambda t, r: (r.mkdir(), "no run.json")[1], 2),
    ("retry-run-json-random", ["retry", "RUN"], lambda t, r: (_run_json(r, "garbage"), "run.json")[1], 2),
    ("verify-no-such-folder", ["verify", "RUN"], lambda t, r: "does not exist", 2),
]  # fmt: skip


@pytest.mark.parametrize(("case", "argv", "make", "code"), RUN_FOLDERS, ids=[row[0] for row in RUN_FOLDERS])
def test_a_run_folder_that_is_not_usable_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, argv: list[str], make: Callable, code: int
) -> None:
    run = tmp_path / "run"
    says = make(tmp_path, run)
    before = folder_hash(tmp_path)
    assert edge.run([str(run) if a == "RUN" else a for a in argv]) == code
    line = error_line(capsys)
    assert says in line and str(run) in line, line
    assert not ray.is_initialized()
    assert folder_hash(tmp_path) == before


# (case id, damage(run) -> words the line must hold): a committed run's other files
RUN_FILES: list[tuple[str, Callable[[RunDir], str]]] = [
    ("failure-record-random", lambda r: (_random_bytes(_failure(r)), "x-000000.json")[1]),
    ("failure-record-no-errors", lambda r: (_failure(r).write_text('{"shard": 0}'), "x-000000.json")[1]),
]  # fmt: skip


def _failure(run: RunDir) -> Path:
    run.record_failure(0, "ValueError: an old failure")
    (run.shard_paths(0).stats).unlink()  # not done: its failure record is read
    return run.failure_path(0)


@pytest.mark.parametrize(("case", "damage"), RUN_FILES, ids=[row[0] for row in RUN_FILES])
def test_a_damaged_run_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, damage: Callable[[RunDir], str]
) -> None:
    root, run = synthetic_run(tmp_path)
    says = damage(run)
    before = folder_hash(tmp_path)
    capsys.readouterr()
    assert edge.run(["status", str(root)]) in (1, 2)
    line = error_line(capsys)
    assert says in line, line
    assert folder_hash(tmp_path) == before
