"""kill -9 of a real build (its whole process group) at named points of a commit, then the
same command: the dataset equals an uninterrupted build's (same shards, same keys, no
duplicates, byte-identical tars). The points (``manifests.killpoint``) make each kill land
where it says on every run, instead of at a random moment. The fourth point, ``committed``
(a shard done, the index not yet), is the closed-loop test's kill (``test_closed_loop_build``),
whose resume is checked there to be the function of the committed prefix an uninterrupted build
is; it is not killed a fifth time here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine.cli_builds import build_killed_at, dataset, run_build, tar_keys, write_recipe

pytestmark = pytest.mark.subprocess


def _done_shards(out: Path) -> set[int]:
    return {json.loads(p.read_text())["shard"] for p in (out / "shards").glob("t-*.stats.json")}


def _first_not_done(out: Path, planned: list[int]) -> int:
    """The lowest shard of the dataset not done yet: the resume builds it for certain."""
    return min(set(planned) - _done_shards(out))


def test_kill_9_at_each_commit_point_then_resume_equals_uninterrupted_build(
    standin_reference: Path, tmp_path: Path
) -> None:
    ref_shards, ref_keys = dataset(standin_reference)
    out = tmp_path / "killed"
    recipe = write_recipe(tmp_path / "killed.toml", out)

    build_killed_at(recipe, "commit")  # the first commit to begin: temps written, nothing renamed
    assert not _done_shards(out) and not list((out / "shards").glob("t-*.tar"))

    shard = _first_not_done(out, ref_shards)
    build_killed_at(recipe, f"renamed:{shard}")  # tar and manifest in place, no stats
    name = f"t-{shard:06d}"
    assert (out / "shards" / f"{name}.tar").exists() and (out / "shards" / f"{name}.parquet").exists()
    assert shard not in _done_shards(out)

    build_killed_at(recipe, "index")  # every shard done, index.parquet written, no index.json
    assert _done_shards(out) >= set(ref_shards)
    assert (out / "index.parquet").exists() and not (out / "index.json").exists()

    resumed = run_build(recipe)
    assert resumed.returncode == 0, resumed.stderr
    shards, keys = dataset(out)
    assert shards == ref_shards
    assert keys == ref_keys
    assert len(set(keys)) == len(keys)
    tar_keys_found = tar_keys(out, shards)
    assert sorted(tar_keys_found) == sorted(ref_keys) and len(set(tar_keys_found)) == len(tar_keys_found)
    for shard in shards:
        tar = f"shards/t-{shard:06d}.tar"
        assert (out / tar).read_bytes() == (standin_reference / tar).read_bytes(), tar
    assert not list((out / "shards").glob("*.tmp*")) and not list((out / "shards").glob(".*tmp*"))
