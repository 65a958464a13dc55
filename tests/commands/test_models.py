"""stages.catalogue: catalogue sanity, no-network error, checksum and resume-safe download."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from factory.commands import models
from factory.commands.models import PullError
from manifests.files import file_sha256
from stages import catalogue
from stages.catalogue import ModelEntry


def test_catalogue_names_are_unique_and_cover_the_stages() -> None:
    names = [e.name for e in models.catalogue()]
    assert len(names) == len(set(names))
    for needed in ("opengraphau-resnet50", "opengraphau-swin-base", "scrfd-10g", "arcface-r50"):
        assert needed in names
    for e in models.catalogue():
        assert e.url.startswith("https://")
        assert e.sha256 is None or len(e.sha256) == 64
    assert models.local_path("scrfd-10g", Path("/x")) == Path("/x/det_10g.onnx")
    with pytest.raises(KeyError, match="unknown model"):
        models.entry("nope")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_says_what_to_fetch_and_where(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there once the socket is closed
    with pytest.raises(PullError) as err:
        models.pull("opengraphau-resnet50", tmp_path, url=f"http://127.0.0.1:{port}/x.pth", timeout=5)
    msg = str(err.value)
    assert "unreachable" in msg
    assert "drive.google.com" in msg  # the official source to fetch by hand
    assert str(tmp_path / "OpenGprahAU-ResNet50_first_stage.pth") in msg
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("www")
    (root / "weights.bin").write_bytes(b"weights v1" * 100)
    with zipfile.ZipFile(root / "pack.zip", "w") as z:
        z.writestr("pack/det.onnx", b"detector bytes")
        z.writestr("pack/other.onnx", b"other")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):  # type: ignore[no-untyped-def]
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def _with_entry(monkeypatch: pytest.MonkeyPatch, e: ModelEntry) -> None:
    monkeypatch.setattr(catalogue, "_CATALOGUE", (*catalogue.catalogue(), e))


def test_pinned_checksum_accepts_and_rejects(
    served: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = served
    good = hashlib.sha256((root / "weights.bin").read_bytes()).hexdigest()
    e = ModelEntry("t-good", "test", "weights.bin", f"{base}/weights.bin", "p", "MIT", sha256=good)
    _with_entry(monkeypatch, e)
    path = models.pull("t-good", tmp_path / "a")
    assert path.read_bytes() == (root / "weights.bin").read_bytes()

    bad = ModelEntry("t-bad", "test", "weights.bin", f"{base}/weights.bin", "p", "MIT", sha256="0" * 64)
    _with_entry(monkeypatch, bad)
    with pytest.raises(PullError, match="checksum mismatch"):
        models.pull("t-bad", tmp_path / "b")
    assert list((tmp_path / "b").iterdir()) == []  # the bad download is not installed


def test_unpinned_hash_is_recorded_then_enforced(
    served: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = served
    e = ModelEntry("t-tofu", "test", "weights.bin", f"{base}/weights.bin", "p", "MIT")
    _with_entry(monkeypatch, e)
    dest = tmp_path / "m"
    path = models.pull("t-tofu", dest)
    recorded = models._recorded(dest)
    assert recorded["weights.bin"] == file_sha256(path)
    # A later pull of a changed upstream file is refused.
    path.unlink()
    (root / "weights.bin").write_bytes(b"weights v2")
    try:
        with pytest.raises(PullError, match="first download recorded"):
            models.pull("t-tofu", dest)
        assert not path.exists()
    finally:
        (root / "weights.bin").write_bytes(b"weights v1" * 100)


def test_archive_member_is_extracted_and_verified(
    served: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = served
    e = ModelEntry(
        "t-zip", "test", "det.onnx", f"{base}/pack.zip", "p", "MIT",
        archive_member="det.onnx", member_sha256=hashlib.sha256(b"detector bytes").hexdigest(),
    )  # fmt: skip
    _with_entry(monkeypatch, e)
    path = models.pull("t-zip", tmp_path)
    assert path == tmp_path / "det.onnx"
    assert path.read_bytes() == b"detector bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".sha256.json", "det.onnx"]
    # Present and matching: no second download needed (a dead URL would fail otherwise).
    _with_entry(monkeypatch, ModelEntry(**{**e.__dict__, "url": "http://127.0.0.1:9/x.zip"}))
    assert models.pull("t-zip", tmp_path) == path


def test_local_path_finds_pulled_file_in_search_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, cwd_models = tmp_path / "cache", tmp_path / "work" / "models"
    monkeypatch.setattr(catalogue, "DEFAULT_MODELS_DIR", cache)
    monkeypatch.setattr(catalogue, "LOCAL_MODELS_DIR", cwd_models)
    assert catalogue.local_path("scrfd-10g") == cache / "det_10g.onnx"  # nowhere yet: where pull would put it
    cwd_models.mkdir(parents=True)
    (cwd_models / "det_10g.onnx").write_bytes(b"x")
    assert catalogue.local_path("scrfd-10g") == cwd_models / "det_10g.onnx"
    cache.mkdir()
    (cache / "det_10g.onnx").write_bytes(b"y")
    assert catalogue.local_path("scrfd-10g") == cache / "det_10g.onnx"  # the cache comes first


# ---------------------------------------------------------------- hub folders

SHA = "0123456789abcdef0123456789abcdef01234567"
HUB_FILES = {"attn_processors.ckpt": b"attn", "pytorch_lora_weights.safetensors": b"lora", "au_encoder.ckpt": b"enc"}


def _offline(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """No route to the Hub: offline mode, a dead endpoint, and a hub cache we control."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{_free_port()}")


def _fake_snapshot(cache: Path, repo: str, files: dict[str, bytes]) -> None:
    """A local Hugging Face cache holding one snapshot of ``repo`` (refs/main -> SHA)."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(SHA)
    for rel, data in files.items():
        (folder / "blobs").mkdir(exist_ok=True)
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = folder / "snapshots" / SHA / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)


def test_hub_entries_are_folders_with_patterns_and_licences() -> None:
    hub = {e.name: e for e in models.catalogue() if e.is_hub}
    assert {"stable-diffusion-2-1-base", "fineface", "realistic-vision-v4", "ip-adapter-faceid-portrait"} <= set(hub)
    assert hub["fineface"].hub_repo == "Tvaranka/fineface" and "Apache-2.0" in hub["fineface"].licence
    assert "RAIL++-M" in hub["stable-diffusion-2-1-base"].licence
    assert "non-commercial" in hub["ip-adapter-faceid-portrait"].licence
    for e in hub.values():
        assert e.allow_patterns and e.required and e.size != "?"
        assert models.local_path(e.name, Path("/m")) == Path("/m") / e.name


def test_hub_pull_offline_says_what_to_fetch_and_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch, tmp_path / "empty-cache")
    with pytest.raises(PullError) as err:
        models.pull("fineface", tmp_path / "models")
    msg = str(err.value)
    assert "https://huggingface.co/Tvaranka/fineface" in msg and "revision main" in msg
    assert "attn_processors.ckpt" in msg and str(tmp_path / "models" / "fineface") in msg
    assert "Apache-2.0" in msg
    assert models.local_state(models.entry("fineface")).state in ("missing", "partial")


def test_hub_pull_copies_a_cached_snapshot_and_records_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline(monkeypatch, tmp_path / "hub")
    _fake_snapshot(tmp_path / "hub", "Tvaranka/fineface", HUB_FILES)
    folder = models.pull("fineface", tmp_path / "models")
    assert folder == tmp_path / "models" / "fineface"
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in HUB_FILES} == HUB_FILES
    record = json.loads((folder / models.PULL_RECORD).read_text())
    assert record["revision"] == SHA and record["repo"] == "Tvaranka/fineface"
    assert sorted(record["files"]) == sorted(HUB_FILES)


def test_hub_pull_leaves_a_present_folder_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch, tmp_path / "empty-cache")  # any network use would fail
    folder = tmp_path / "models" / "fineface"
    folder.mkdir(parents=True)
    for name, data in HUB_FILES.items():
        (folder / name).write_bytes(data)
    assert models.pull("fineface", tmp_path / "models") == folder
    monkeypatch.setattr(catalogue, "DEFAULT_MODELS_DIR", tmp_path / "models")
    monkeypatch.delenv("MIFA_MODELS_DIR", raising=False)
    assert models.local_state(models.entry("fineface")).state == "present"
    (folder / "au_encoder.ckpt").unlink()
    assert models.local_state(models.entry("fineface")).state == "partial"
    with pytest.raises(PullError, match="Fetch it by hand"):  # partial: fetched again, and offline that fails
        models.pull("fineface", tmp_path / "models")


def test_models_list_shows_licence_size_and_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from factory.cli import app

    monkeypatch.setenv("MIFA_MODELS_DIR", str(tmp_path))
    (tmp_path / "det_10g.onnx").write_bytes(b"x")
    result = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 4}
    assert "present" in rows["scrfd-10g"] and "missing" in rows["fineface"]
    assert "~5.2 GB" in rows["stable-diffusion-2-1-base"] and "Apache-2.0" in rows["fineface"]
