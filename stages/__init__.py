"""Stage registry: one line per stage, ``name -> "module:Class"``.

Modules are imported lazily so a stage's heavy or optional dependencies (torch, dlib,
onnxruntime, openai) are only needed when a recipe chooses it.
"""

from __future__ import annotations

import importlib

from stages.base import Stage, StageError

__all__ = ["REGISTRY", "stage_class"]

REGISTRY: dict[str, str] = {
    # prompt expansion
    "prompt": "stages.prompt.stage:PromptStage",
    # generators
    "warp": "stages.generators.warp.stage:WarpGenerator",
    "diffusers": "stages.generators.diffusers:DiffusersGenerator",
    "maugen": "stages.generators.maugen.stage:MaugenGenerator",
    "fineface": "stages.generators.fineface.stage:FineFaceGenerator",
    "magicface": "stages.generators.magicface.stage:MagicFaceGenerator",
    # face detection and alignment
    "dlib": "stages.faces.dlib:DlibFaceStage",
    "lbp": "stages.faces.lbp:LBPFaceStage",
    "scrfd": "stages.faces.scrfd:SCRFDFaceStage",
    # AU detectors
    "geometric": "stages.detectors.geometric:GeometricAUDetector",
    "appearance": "stages.detectors.appearance:AppearanceAUDetector",
    "opengraphau": "stages.detectors.opengraphau.stage:OpenGraphAUDetector",
    "onnx-au": "stages.detectors.onnx:OnnxAUDetector",
    # agreement, realism, filters
    "agreement": "stages.agreement:AgreementStage",
    "heuristic-realism": "stages.realism.heuristic:HeuristicRealism",
    "learned-realism": "stages.realism.learned:LearnedRealism",
    "filters": "stages.filters:FilterStage",
    "portrait-filters": "stages.portrait:PortraitFilterStage",
}


def stage_class(name: str) -> type[Stage]:
    """The class registered as ``name``, or a plugin given as ``"package.module:Class"``.

    Unknown or unimportable names raise a StageError that says what to do.
    """
    if ":" in name:
        target = name  # a user's own stage, importable on every Ray worker
    else:
        try:
            target = REGISTRY[name]
        except KeyError:
            raise StageError(
                f"unknown stage {name!r}; registered stages: {', '.join(sorted(REGISTRY))}, "
                "or 'package.module:Class' for your own"
            ) from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise StageError(
                f"stage {name!r}: module {module_name!r} cannot be imported; check the "
                "stage name or that your plugin package is installed on every worker"
            ) from exc
        raise StageError(
            f"stage {name!r} needs the Python package {exc.name!r}, which is not installed; "
            f"install it with: pip install 'mifa-factory[all]'"
        ) from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise StageError(f"{target} is not a Stage subclass")
    return cls
