"""`factory identities calibrate`: the identity check's threshold measured on labelled real photos.

The folder holds one sub-folder per person (its name is the label), each with that person's
photos. Every photo's single face is found as a bank exemplar's is (dlib, the same rules as
``factory identities index``), embedded by each recogniser asked for, and every pair scored
(:mod:`stages.faces.calibration`). A photo without exactly one face is left out and listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from manifests.errors import UserError
from stages.catalogue import local_path
from stages.faces.calibration import Calibration, calibrate
from stages.faces.embedding import Embedder, EmbedderError, arcface_embedder, dlib_embedder
from stages.faces.exemplar import ExemplarError, decode_image, exemplar_face

__all__ = ["IMAGE_SUFFIXES", "LabelledFaces", "calibrate_folder", "labelled_faces", "recogniser"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


@dataclass
class LabelledFaces:
    """The usable faces of a labelled folder: who, the photo, its 68 landmarks; and what was left out."""

    people: list[str] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # "path: why"


def labelled_faces(folder: Path) -> LabelledFaces:
    """Detect the single face of every photo under ``folder/<person>/``."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder", fix="pass a folder with one sub-folder of photos per person")
    faces = LabelledFaces()
    for photo in sorted(p for p in folder.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            image = decode_image(photo.read_bytes(), photo)
            face = exemplar_face(image)
        except ExemplarError as exc:
            faces.left_out.append(f"{photo}: {exc.reason}")
            continue
        faces.people.append(photo.parent.name)
        faces.images.append(image)
        faces.landmarks.append(face.landmarks)
    counts = [faces.people.count(p) for p in set(faces.people)]
    if len(counts) < 2 or max(counts) < 2:
        raise UserError(
            f"{folder}: {len(faces.people)} usable photos of {len(counts)} people",
            fix="calibration needs two or more people, at least one of them in two or more photos "
            "(one sub-folder per person)",
        )
    return faces


def recogniser(name: str, arcface_onnx: Path | None) -> Embedder:
    """The identity check's embedder ``name`` (``dlib`` or ``arcface``), as the filters load it."""
    if name == "dlib":
        return dlib_embedder()
    try:
        return arcface_embedder(arcface_onnx or local_path("arcface-r50"))
    except EmbedderError as exc:
        raise UserError(f"--arcface-onnx: {exc}") from None


def calibrate_folder(faces: LabelledFaces, embedder: Embedder) -> Calibration:
    """Score every pair of ``faces`` with ``embedder``."""
    embeddings = [embedder(image, marks) for image, marks in zip(faces.images, faces.landmarks, strict=True)]
    return calibrate(faces.people, embeddings)
