"""Identity bank indexing on a temp bank: two real portraits, a faceless image, an
unreadable file and a missing one; caching; the ArcFace path (insightface's model_zoo) on a
tiny random-weight model with ArcFace's signature."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from insightface.app.common import Face
from insightface.model_zoo import get_model
from PIL import Image
from skimage import data

from factory.commands.identities import EMBEDDINGS_FILE, BankIndexError, index_bank, load_embeddings
from stages.faces.embedding import arcface_embedder, identity_similarity
from stages.faces.landmarks import detect_faces, five_points

IDS = ("astronaut", "hopper", "pair", "flat", "garbage", "gone")


def _write_bank(folder: Path) -> None:
    folder.mkdir()
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        (folder / "hopper.jpg").write_bytes(f.read())
    hopper = np.asarray(Image.open(folder / "hopper.jpg").convert("RGB"))[:512]
    Image.fromarray(np.hstack([data.astronaut(), hopper])).save(folder / "pair.png")
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(folder / "flat.png")
    (folder / "garbage.jpg").write_bytes(b"this is not a JPEG at all" * 10)
    files = {
        "astronaut": "astronaut.png",
        "hopper": "hopper.jpg",
        "pair": "pair.png",
        "flat": "flat.png",
        "garbage": "garbage.jpg",
        "gone": "gone.png",
    }
    with (folder / "identities.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["identity_id", "image", "ethnicity", "age_band", "gender", "source", "licence"])
        for i in IDS:
            w.writerow([i, files[i], "white", "adult", "female", "test", "public-domain"])


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("banks") / "bank"
    _write_bank(folder)
    return folder


@pytest.fixture(scope="module")
def first_report(bank: Path):
    return index_bank(bank)


def test_statuses_reported_for_every_identity(first_report) -> None:
    status = {e.identity_id: e.status for e in first_report.entries}
    assert status == {
        "astronaut": "ok",
        "hopper": "ok",
        "pair": "several_faces",
        "flat": "no_face",
        "garbage": "unreadable",
        "gone": "missing",
    }
    reasons = {e.identity_id: e.reason for e in first_report.entries}
    assert "garbage.jpg" in reasons["garbage"] and "gone.png" in reasons["gone"]
    assert first_report.ok == ["astronaut", "hopper"]
    assert "2 faces" in reasons["pair"]
    assert first_report.computed == 5  # the missing file has nothing to compute
    assert "flat: no_face" in first_report.summary()
    # The astronaut smiles with parted lips; Grace Hopper's portrait is neutral.
    warnings = {e.identity_id: " ".join(e.warnings) for e in first_report.entries}
    assert "lips parted" in warnings["astronaut"] and "corners raised" in warnings["astronaut"]
    assert "reads AU12=3 AU25=5 in population mode" in warnings["astronaut"]  # not recorded in this bank
    assert warnings["hopper"] == ""


def test_cache_file_contents(bank: Path, first_report) -> None:
    rows = {r["identity_id"]: r for r in pq.read_table(bank / EMBEDDINGS_FILE).to_pylist()}
    assert set(rows) == {"astronaut", "hopper", "pair", "flat", "garbage"}
    ok = rows["astronaut"]
    assert ok["embedder"] == "dlib" and len(ok["embedding"]) == 128
    assert len(ok["landmarks"]) == 68 and len(ok["box"]) == 4
    assert len(ok["image_sha256"]) == 64
    assert rows["flat"]["embedding"] is None and rows["flat"]["status"] == "no_face"


def test_second_run_recomputes_nothing_then_only_changed(bank: Path, first_report) -> None:
    before = load_embeddings(bank)
    again = index_bank(bank)
    assert again.computed == 0 and again.reused == 5
    assert [(e.status, e.warnings) for e in again.entries] == [(e.status, e.warnings) for e in first_report.entries]
    after = load_embeddings(bank)
    assert set(after) == {"astronaut", "hopper"}
    np.testing.assert_array_equal(before["astronaut"], after["astronaut"])
    # Change one image: only that identity is recomputed (the faceless one now has a face).
    Image.open(bank / "astronaut.png").save(bank / "flat.png")
    third = index_bank(bank)
    assert {e.identity_id for e in third.entries if e.computed} == {"flat"}
    assert "flat" in load_embeddings(bank)


def test_embeddings_separate_identities(bank: Path, first_report) -> None:
    emb = load_embeddings(bank)
    assert identity_similarity(emb["astronaut"], emb["astronaut"]) == pytest.approx(1.0)
    assert identity_similarity(emb["astronaut"], emb["hopper"]) < 0.9
    with pytest.raises(ValueError, match="differ in size"):
        identity_similarity(emb["astronaut"], np.ones(512))


def test_arcface_needs_a_model_file(bank: Path, tmp_path: Path) -> None:
    with pytest.raises(BankIndexError, match="arcface_onnx"):
        index_bank(bank, embedder="arcface")
    with pytest.raises(BankIndexError, match=r"nope\.onnx does not exist; `factory models pull arcface-r50`"):
        index_bank(bank, embedder="arcface", arcface_onnx=tmp_path / "nope.onnx")
    with pytest.raises(BankIndexError, match="unknown embedder"):
        index_bank(bank, embedder="facenet")


def test_load_embeddings_without_index(tmp_path: Path) -> None:
    with pytest.raises(BankIndexError, match="identities index"):
        load_embeddings(tmp_path)


@pytest.fixture(scope="module")
def tiny_arcface(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight stand-in with ArcFace's signature: (1, 3, 112, 112) -> (1, 512)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 5, stride=4),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 512),
    ).eval()
    path = tmp_path_factory.mktemp("arcface") / "tiny_arcface.onnx"
    # The TorchScript exporter (dynamo=False): the default dynamo one needs onnxscript.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.zeros(1, 3, 112, 112),), str(path), input_names=["data"], output_names=["fc1"], dynamo=False
        )
    return path


def test_arcface_onnx_embeddings(bank: Path, tiny_arcface: Path) -> None:
    report = index_bank(bank, embedder="arcface", arcface_onnx=tiny_arcface)
    assert {e.identity_id for e in report.entries if e.status == "ok"} >= {"astronaut", "hopper"}
    arc = load_embeddings(bank, embedder="arcface")
    assert arc["astronaut"].shape == (512,)
    assert np.linalg.norm(arc["astronaut"]) == pytest.approx(1.0, abs=1e-5)
    # dlib rows survive next to the ArcFace rows, and a rerun reuses both.
    assert load_embeddings(bank, embedder="dlib")["astronaut"].shape == (128,)
    assert index_bank(bank, embedder="arcface", arcface_onnx=tiny_arcface).computed == 0
    assert index_bank(bank).computed == 0


def test_arcface_bad_model_files(bank: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(BankIndexError, match=r"broken\.onnx"):
        index_bank(bank, embedder="arcface", arcface_onnx=broken)
    wrong = tmp_path / "wrong_input.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 512)),
            (torch.zeros(1, 3, 64, 64),),
            str(wrong),
            dynamo=False,
        )
    with pytest.raises(BankIndexError, match=r"not an ArcFace recognition model.*\(N, 3, 112, 112\)"):
        index_bank(bank, embedder="arcface", arcface_onnx=wrong)
    renamed = tmp_path / "w600k_r50.bin"
    renamed.write_bytes(wrong.read_bytes())
    with pytest.raises(BankIndexError, match=r"not an \.onnx file"):
        index_bank(bank, embedder="arcface", arcface_onnx=renamed)


def test_arcface_embedding_is_insightface_recognition(tiny_arcface: Path) -> None:
    """Our embedder gives what insightface's own recognition path gives (norm_crop, get_feat)."""
    image = np.asarray(data.astronaut())
    landmarks = detect_faces(image)[0].landmarks
    ours = arcface_embedder(tiny_arcface)(image, landmarks)
    model = get_model(str(tiny_arcface), providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-image's deprecation inside norm_crop
        theirs = model.get(np.ascontiguousarray(image[..., ::-1]), Face(kps=five_points(landmarks)))
    np.testing.assert_allclose(ours, theirs / np.linalg.norm(theirs), rtol=1e-5, atol=1e-6)
