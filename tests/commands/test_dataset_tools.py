"""The dataset tools on a real (small) demo build: verify and repair + rebuild, filter and
every export format, show --regenerate, the report in headless Chromium, the card."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from PIL import Image

from factory.commands.report import build_report
from factory.commands.show import regenerate
from manifests.index import read_index
from manifests.layout import shard_paths
from manifests.query import query
from tests.cli_runner import run_cli
from tests.commands.conftest import build

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
PLAN_BLUE, LABEL_ORANGE = (31, 119, 180), (255, 127, 14)  # the report's plan and label colours


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_build_has_a_card_naming_its_non_commercial_models(demo_build: tuple[Path, Path]) -> None:
    run, _ = demo_build
    card = (run / "DATASET_CARD.md").read_text()
    first = card.splitlines()[0]
    assert first.startswith("**Licence: NON-COMMERCIAL USE ONLY.**") and "dlib (face)" in first
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["seed"] == 7 and provenance["recipe"]["dataset"]["shard_size"] == 4
    assert "sha256 `" in card and "| mifa-factory |" in card  # model hashes, software versions


def test_verify_finds_damage_and_repair_then_build_restores_the_dataset(
    demo_build: tuple[Path, Path], tmp_path: Path
) -> None:
    original, recipe = demo_build
    run = tmp_path / "run"
    shutil.copytree(original, run)
    index = read_index(original)
    assert index is not None and len(index["shards"]) >= 4
    paths = [shard_paths(run / "shards", "mifa_demo", s) for s in range(4)]
    paths[0].tar.write_bytes(paths[0].tar.read_bytes()[:-5000])  # truncated tar
    data = bytearray(paths[1].tar.read_bytes())
    data[2000] ^= 0x01  # a flipped bit inside the first image
    paths[1].tar.write_bytes(bytes(data))
    paths[2].parquet.unlink()  # deleted manifest
    for path in (paths[3].tar, paths[3].parquet, paths[3].stats):
        path.unlink()  # missing shard

    code, output = run_cli("verify", run)
    assert code == 1
    assert "corrupt shards: [0, 1]" in output and "missing shards: [2, 3]" in output
    assert "truncated" in output and "sha256" in output
    code, output = run_cli("verify", run, "--repair")
    assert code == 1 and "redoes shard(s) [0, 1, 2, 3]" in output
    assert not (run / "index.json").exists()

    rebuilt = build(recipe, "--out", str(run))
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert run_cli("verify", run)[0] == 0
    # Equal to the original: the same shards, byte for byte, and the same index rows.
    assert read_index(run)["shards"] == index["shards"]  # type: ignore[index]
    for shard in index["shards"]:
        before = shard_paths(original / "shards", "mifa_demo", shard)
        after = shard_paths(run / "shards", "mifa_demo", shard)
        assert _sha(after.tar) == _sha(before.tar), f"shard {shard} tar differs"
        assert pq.read_table(after.parquet).equals(pq.read_table(before.parquet)), f"shard {shard} manifest differs"
    assert pq.read_table(run / "index.parquet").equals(pq.read_table(original / "index.parquet"))


def test_filter_then_every_export_format(demo_build: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = demo_build
    subset = tmp_path / "subset"
    code, output = run_cli(
        "filter", run, subset, "--balance", "age_band", "--limit", "8", "--seed", "3", "--accepted-only"
    )
    assert code == 0, output
    keys = sorted(query(subset)["key"].to_pylist())
    assert len(keys) == 8 and set(keys) <= set(query(run)["key"].to_pylist())
    assert [k for (k,) in duckdb.sql(f"SELECT key FROM '{subset}/index.parquet' ORDER BY key").fetchall()] == keys

    # The demo has two identities: the splitting formats take two folds / a train-test split.
    two = {"huggingface": ["--shares", "0.5,0.5"], "graphau": ["--folds", "2"], "libreface": ["--folds", "2"]}
    for fmt in ("webdataset", "folder", "huggingface", "maugen", "graphau", "libreface"):
        code, output = run_cli(
            "export", subset, tmp_path / fmt, "--format", fmt, "--shard-size", "3", "-q", *two.get(fmt, [])
        )
        assert code == 0, output
        assert json.loads((tmp_path / fmt / "export.json").read_text())["samples"] == 8
    code, output = run_cli("export", subset, tmp_path / "three-folds", "--format", "graphau")
    assert code == 2 and len(output.strip().splitlines()) == 1 and "--folds 2" in output, output

    # WebDataset: read by webdataset inside a torch DataLoader with 2 workers, each sample once.
    tars = sorted(str(p) for p in (tmp_path / "webdataset").glob("*.tar"))
    assert len(tars) == 3
    pipeline = (
        wds.WebDataset(tars, shardshuffle=False, empty_check=False).decode("rgb").to_tuple("__key__", "jpg", "json")
    )
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=2)
    seen = {key: (image.shape, label["au_occurrence"]) for key, image, label in loader}
    assert sorted(seen) == keys
    assert all(shape == (256, 256, 3) for shape, _ in seen.values())
    # Hugging Face folder: loads without a script.
    datasets = pytest.importorskip("datasets", reason="datasets is a [dev] dependency")
    loaded = datasets.load_dataset(str(tmp_path / "huggingface"), cache_dir=str(tmp_path / "hf-cache"))
    assert sorted([*loaded["train"]["key"], *loaded["test"]["key"]]) == keys
    assert loaded["train"][0]["image"].size == (256, 256)
    assert not set(loaded["train"]["identity_id"]) & set(loaded["test"]["identity_id"])
    # Folder: one row per image, 12 occurrence and 12 intensity columns.
    with open(tmp_path / "folder" / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["key"] for r in rows) == keys
    header = list(rows[0])
    assert len([c for c in header if c.startswith("AU") and "_" not in c]) == 12
    assert len([c for c in header if c.endswith("_intensity")]) == 12
    assert all((tmp_path / "folder" / r["file"]).is_file() for r in rows)
    entries = json.loads((tmp_path / "maugen" / "sample_data.json").read_text())
    assert len(entries) == 8 and all(len(e["intensity"]) == 12 for e in entries)
    assert (tmp_path / "graphau" / "list" / "DISFA_train_img_path_fold1.txt").exists()
    # eval reads the subset like any dataset.
    assert run_cli("eval", subset, "--out", tmp_path / "eval")[0] == 0
    # The licences travel: the subset's and every export's card open with the verdict.
    for card in (
        subset / "DATASET_CARD.md",
        tmp_path / "folder" / "DATASET_CARD.md",
        tmp_path / "webdataset" / "DATASET_CARD.md",
    ):
        assert card.read_text().startswith("**Licence: NON-COMMERCIAL USE ONLY.**"), card
    assert "**Licence: NON-COMMERCIAL USE ONLY.**" in (tmp_path / "huggingface" / "README.md").read_text()


def test_show_regenerate_reproduces_a_demo_sample_exactly(demo_build: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = demo_build
    key = query(run, sql="SELECT key FROM samples ORDER BY key LIMIT 1")["key"][0].as_py()
    sample, result = regenerate(run, key)
    assert result.identical and result.image_identical, result.to_dict()
    code, output = run_cli("show", run, key, "--image", tmp_path / "s.jpg")
    assert code == 0 and "description:" in output and "geometric" in output and "consensus" in output
    assert (tmp_path / "s.jpg").read_bytes() == sample.image
    code, output = run_cli("show", run, key, "--regenerate")
    assert code == 0 and "regenerated identically" in output


def test_show_regenerate_reports_a_difference(demo_build: tuple[Path, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(demo_build[0], run)
    key = query(run, sql="SELECT key FROM samples ORDER BY key LIMIT 1")["key"][0].as_py()
    # Store another image for that sample (a white corner, re-encoded, padded to the same size
    # so the tar stays readable): the regeneration must say how far it is from what it makes.
    tar = shard_paths(run / "shards", "mifa_demo", int(key[:6])).tar
    original = {s["__key__"]: s["jpg"] for s in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False)}[key]
    pixels = np.asarray(Image.open(io.BytesIO(original))).copy()
    pixels[:8, :8] = 255
    replaced = io.BytesIO()
    Image.fromarray(pixels).save(replaced, format="JPEG", quality=80)
    assert len(replaced.getvalue()) <= len(original)
    data = tar.read_bytes()
    start = data.index(original)
    patch = replaced.getvalue() + b"\0" * (len(original) - len(replaced.getvalue()))
    tar.write_bytes(data[:start] + patch + data[start + len(original) :])
    _, result = regenerate(run, key)
    assert not result.identical and result.image_identical is False
    assert any(d.field == "image" and "max abs pixel difference" in d.detail for d in result.differences)
    assert run_cli("show", run, key, "--regenerate")[0] == 1


def _screenshot(chromium: str, page: Path, png: Path, profile: Path) -> np.ndarray:
    subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1280,7000",
         page.as_uri()],
        capture_output=True,
        timeout=180,
        check=True,
    )  # fmt: skip
    return np.asarray(Image.open(png).convert("RGB"))


def _pixels(image: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int(np.sum(np.all(np.abs(image.astype(int) - colour) <= 3, axis=-1)))


def test_report_renders_in_headless_chromium(demo_build: tuple[Path, Path], tmp_path: Path, chromium: str) -> None:
    run, _ = demo_build
    page = build_report(run, tmp_path / "report.html")
    html = page.read_text()
    assert "<script" not in html and "http" not in html.split("<body>", 1)[1]  # self-contained, offline
    for section in ("au-occurrence", "au-intensity", "co-occurrence", "balance", "funnel", "agreement", "fidelity"):
        assert f'id="{section}"' in html
    # Every embedded image decodes in Chromium (naturalWidth > 0), read back from the DOM.
    probe = tmp_path / "probe.html"
    script = (
        "<script>addEventListener('load', () => document.body.setAttribute('data-images', JSON.stringify("
        "Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0))));</script>"
    )
    probe.write_text(html.replace("</body>", script + "</body>"))
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'p0'}", "--virtual-time-budget=10000",
         "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=180, check=True,
    ).stdout  # fmt: skip
    widths = json.loads(dom.split('data-images="', 1)[1].split('"', 1)[0].replace("&quot;", '"'))
    assert len(widths) == html.count("<img ") >= 8 and all(w > 0 for w in widths)
    # The screenshot shows the plots: the plan's blue and the labels' orange are on screen,
    # and a copy of the page without its images shows neither.
    shot = _screenshot(chromium, page, tmp_path / "shot.png", tmp_path / "p1")
    assert _pixels(shot, PLAN_BLUE) > 5000 and _pixels(shot, LABEL_ORANGE) > 5000
    bare = tmp_path / "bare.html"
    bare.write_text("".join(part.split(">", 1)[-1] if i else part for i, part in enumerate(html.split("<img "))))
    empty = _screenshot(chromium, bare, tmp_path / "bare.png", tmp_path / "p2")
    assert _pixels(empty, PLAN_BLUE) == 0 and _pixels(empty, LABEL_ORANGE) == 0


def test_cli_errors_are_one_line(demo_build: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = demo_build
    for args, message in (
        (("filter", run, tmp_path / "s", "--balance", "description", "--limit", "3"), "not a column to balance"),
        (("filter", run, tmp_path / "s", "--min-intensity", "smile"), "AU12=3"),
        (("export", run, tmp_path / "e", "--format", "tiff"), "format must be one of"),
        (("export", run, tmp_path / "e", "--shard-bytes", "lots"), "--shard-bytes 'lots'"),
        (("show", run, "999999_00000"), "no sample '999999_00000'"),
        (("verify", tmp_path / "nowhere"), "does not exist"),
        (("report", tmp_path), "never committed"),
    ):
        code, output = run_cli(*args)
        assert code == 2, (args, output)
        assert message in output and "Traceback" not in output
