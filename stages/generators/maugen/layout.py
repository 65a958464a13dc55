"""The MAUGen release's five artefacts on disk (``checkpoint.py`` describes them) and the
check that they are all there, without torch: the build's preflight runs it on the driver
before any model loads."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from stages.base import StageError

__all__ = ["BASE_LAYOUT", "DEFAULT_FILES", "ReleaseFiles", "expected_layout", "resolve_files"]

BASE_LAYOUT = ("model_index.json", "unet/", "vae/", "text_encoder/", "tokenizer/", "scheduler/")


@dataclass(frozen=True)
class ReleaseFiles:
    """Names, relative to ``checkpoint_dir``, of the five release artefacts."""

    base: str = "stable-diffusion-inpainting"
    unet: str = "maugen_unet.pth"
    au_cue: str = "au_cue.pt"
    img2text: str = "img2text_exp.pth"
    identity_encoder: str = "msid_112.pth"


DEFAULT_FILES = ReleaseFiles()

_ROLES = {
    "base": "base SD-inpainting pipeline folder: " + ", ".join(BASE_LAYOUT),
    "unet": "custom UNet state dict (unet.*, auxiliary_head.*, au_transformer.*, dual_prediction_head.*)",
    "au_cue": "AU-cue tensor (1, 12, D)",
    "img2text": "image-to-text-with-expression state dict (i2t_first.*, i2t_last.*, null_exp)",
    "identity_encoder": "112x112 multi-scale identity encoder state dict (patch_embed.*, blocks.*, norms.*)",
}


def expected_layout(root: Path, files: ReleaseFiles = DEFAULT_FILES) -> str:
    """Multi-line description of every expected file, for error messages."""
    lines = [f"expected MAUGen checkpoint layout in {root}:"]
    for f in fields(files):
        name = getattr(files, f.name)
        suffix = "/" if f.name == "base" else ""
        lines.append(f"  {name}{suffix}  - {_ROLES[f.name]}")
    return "\n".join(lines)


def resolve_files(root: Path, files: ReleaseFiles = DEFAULT_FILES) -> dict[str, Path]:
    """Paths of the five artefacts; :class:`StageError` naming the first missing one."""
    layout = expected_layout(root, files)
    if not root.is_dir():
        raise StageError(f"MAUGen checkpoint_dir {root} does not exist; set generator.checkpoint_dir.\n{layout}")
    paths = {f.name: root / getattr(files, f.name) for f in fields(files)}
    for role, path in paths.items():
        ok = path.is_dir() if role == "base" else path.is_file()
        if not ok:
            raise StageError(f"MAUGen checkpoint file {path} is missing ({_ROLES[role]}).\n{layout}")
    base = paths["base"]
    index = base / "model_index.json"
    if not index.is_file():
        raise StageError(f"MAUGen checkpoint file {index} is missing; {base} must be a diffusers pipeline.\n{layout}")
    try:
        components = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StageError(f"MAUGen checkpoint file {index} cannot be read ({exc}).\n{layout}") from exc
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if part not in components or not (base / part).is_dir():
            raise StageError(f"MAUGen checkpoint file {base / part}/ is missing.\n{layout}")
    return paths
