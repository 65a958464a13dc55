"""The one "new, empty or ours" rule (manifests.claim) and the node-local cache folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from manifests.claim import FolderKind, claim_folder
from manifests.store import location, node_cache_dir


class KindError(ValueError):
    pass


KIND = FolderKind(
    noun="test target",
    what="a test output",
    marker="marker.json",
    fix="choose another folder",
    error=KindError,
    leftover=lambda name: name.endswith(".tmp"),
)


def test_missing_empty_and_leftover_only_folders_are_new(tmp_path: Path) -> None:
    assert claim_folder(tmp_path / "absent", KIND) == "new"
    assert not (tmp_path / "absent").exists()  # claiming creates nothing
    assert claim_folder(tmp_path, KIND) == "new"
    (tmp_path / ".x.tmp").write_text("")
    assert claim_folder(tmp_path, KIND) == "new"


def test_marked_folder_is_ours_unless_the_kind_says_otherwise(tmp_path: Path) -> None:
    (tmp_path / "marker.json").write_text("{}")
    (tmp_path / "data.bin").write_text("")
    assert claim_folder(tmp_path, KIND) == "ours"
    strict = FolderKind(**{**KIND.__dict__, "is_ours": lambda folder: False})
    with pytest.raises(KindError, match=r"is not a test output \(no marker.json; it holds data.bin, marker.json\)"):
        claim_folder(tmp_path, strict)


def test_foreign_folder_and_file_are_refused_naming_them_and_the_fix(tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        (tmp_path / name).write_text("")
    with pytest.raises(KindError, match=rf"test target {tmp_path} is not empty .*it holds a, b, c, \.\.\.\); choose"):
        claim_folder(tmp_path, KIND)
    with pytest.raises(KindError, match="is a file, not a folder; choose another folder"):
        claim_folder(tmp_path / "a", KIND)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "d"]


def test_local_only_kind_refuses_object_storage() -> None:
    local_only = FolderKind(**{**KIND.__dict__, "local_only": "use a local folder"})
    with pytest.raises(KindError, match="is on object storage; use a local folder"):
        claim_folder(location("s3://bucket/prefix"), local_only)


def test_node_cache_dir_is_local_stable_per_dataset_and_outside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIFA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    dataset = tmp_path / "out"
    folder = node_cache_dir(dataset, "llm")
    assert folder.is_dir() and folder.is_relative_to(tmp_path / "cache" / "llm")
    assert node_cache_dir(Path("out"), "llm") == folder  # relative or absolute: the same dataset
    assert node_cache_dir(tmp_path / "other", "llm") != folder
    assert node_cache_dir("s3://bucket/prefix", "llm") == node_cache_dir("s3://bucket/prefix/", "llm")
    assert not dataset.exists()
