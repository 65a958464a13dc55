"""The shard worker's in-process pipeline on a device, checked: the harness of the CUDA smoke test.

:func:`run_smoke` builds the chain recipe of ``bench.gpu_chain`` on the given models, makes a
:class:`factory.engine.worker.ShardWorker` (plain Python; Ray only places it in a build) and
runs one shard of two micro-batches through it, with a forward pre-hook on every torch module
the stages hold that records any tensor input on another device than the module's own. It
returns what the tests check: the worker's device, where each module's weights are and in
which dtype, the device mismatches seen, the committed shard's manifest and its tar members.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench.gpu_chain import chain_recipe, described, torch_placement
from bench.gpu_models import ModelFolders
from factory.engine.pipeline import Pipeline
from factory.engine.worker import ShardWorker
from manifests.layout import shard_paths
from manifests.schema import MANIFEST_SCHEMA

__all__ = ["Smoke", "check_smoke", "device_guard", "run_smoke"]


@dataclass
class Smoke:
    device: str
    placement: list[tuple[str, str, str]]
    mismatches: list[str]
    manifest: pa.Table
    members: list[str]
    stats: dict[str, Any]
    planned: int
    onnx_providers: dict[str, list[str]] = field(default_factory=dict)


def _modules(pipelines: list[Pipeline]) -> Iterator[tuple[str, Any]]:
    """(path, module) of every torch module a stage holds (``torch_placement``'s walk)."""
    import torch  # deferred: optional and heavy

    paths = {path for path, _, _ in torch_placement(pipelines)}
    for pipeline in pipelines:
        for stage in pipeline.stages:
            for path in paths:
                head, *rest = path.split(".")
                if head != stage.name:
                    continue
                obj: Any = stage
                for name in rest:
                    obj = getattr(obj, name)
                if isinstance(obj, torch.nn.Module):
                    yield path, obj


@contextmanager
def device_guard(pipelines: list[Pipeline]) -> Iterator[list[str]]:
    """Record every module call whose tensor inputs are not all on the module's device."""
    import torch  # deferred: optional and heavy

    seen: list[str] = []
    handles = []

    def check(path: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            own = next(module.parameters()).device.type
            inputs = [*args, *kwargs.values()]
            for value in inputs:
                if isinstance(value, torch.Tensor) and value.device.type != own:
                    seen.append(f"{path}: a {value.device.type} input to a {own} module")

        return hook

    for pipeline_path, top in _modules(pipelines):
        for name, module in top.named_modules():
            if next(module.parameters(recurse=False), None) is not None:
                hook = check(f"{pipeline_path}.{name}" if name else pipeline_path)
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _onnx_providers(worker: ShardWorker) -> dict[str, list[str]]:
    """The execution providers of each ONNX session the stages hold (scrfd, LibreFace)."""
    found: dict[str, list[str]] = {}
    for stage in worker.checks.stages:
        for name, value in vars(stage).items():
            # scrfd keeps insightface's model (its .session); onnx-au a list of (session, input, output, flatten)
            held = [s[0] for s in value] if name == "sessions" else [getattr(value, "session", value)]
            for i, session in enumerate(held):
                providers = getattr(session, "get_providers", None)
                if callable(providers):
                    found[f"{stage.name}.{name}[{i}]"] = list(providers())
    return found


def run_smoke(folders: ModelFolders, out: Path, batch_size: int, steps: int) -> Smoke:
    """One shard of two micro-batches through the shard worker on this machine's device."""
    recipe = chain_recipe(folders, out, batch_size=batch_size, batches=2, steps=steps)
    records = described(recipe)
    worker = ShardWorker(recipe, str(out))
    pipelines = [worker.generator, worker.checks]
    with device_guard(pipelines) as mismatches:
        stats = worker.run_shard(0, (records, 0.0), attempt=1, ticket=1)
    paths = shard_paths(worker.layout.shards, recipe.dataset.name, 0)
    with tarfile.open(paths.tar) as tar:
        members = tar.getnames()
    return Smoke(
        device=worker.device,
        placement=torch_placement(pipelines),
        mismatches=list(mismatches),
        manifest=pq.read_table(paths.parquet),
        members=members,
        stats=stats,
        planned=len(records),
        onnx_providers=_onnx_providers(worker),
    )


def check_smoke(smoke: Smoke, device: str, generator_dtype: str) -> None:
    """What the CUDA smoke test asserts, on any device."""
    assert smoke.device == device
    names = {path for path, _, _ in smoke.placement}
    assert {"fineface.pipe.pipe.unet", "fineface.pipe.pipe.vae", "fineface.pipe.pipe.text_encoder"} <= names
    assert "opengraphau.net" in names
    off = [p for p in smoke.placement if p[1] != device]
    assert not off, f"modules not on {device}: {off}"
    for path, _, dtype in smoke.placement:
        if path.startswith("fineface.pipe.pipe."):
            assert dtype == generator_dtype, (path, dtype)
    assert smoke.mismatches == []
    table = smoke.manifest
    assert table.num_rows == smoke.planned
    for name in MANIFEST_SCHEMA.names:  # every column of the data model, with its type
        assert table.schema.field(name).type == MANIFEST_SCHEMA.field(name).type, name
    assert smoke.stats["accepted"] == sum(table.column("accepted").to_pylist())
    images = [m for m in table.column("image_member").to_pylist() if m]
    assert images and set(images) <= set(smoke.members)
    # The SCRFD stand-in finds the face, so every sample reaches the three detectors; the two
    # networks vote on every AU (geometric needs 68 landmarks, which SCRFD's 5 keypoints are not).
    assert "scrfd" not in table.column("dropped_by").to_pylist()
    for votes in table.column("votes").to_pylist():
        by_detector = {v["detector"]: v for v in votes}
        assert set(by_detector) == {"geometric", "opengraphau", "onnx-au"}
        assert all(x is not None for name in ("opengraphau", "onnx-au") for x in by_detector[name]["occurrence"])
