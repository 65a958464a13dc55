"""stages.catalogue: catalogue sanity, no-network error, checksum and resume-safe download."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from factory.commands import models
from factory.commands.models import PullError
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
    assert recorded["weights.bin"] == models.sha256_file(path)
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
