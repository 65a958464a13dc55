"""Generic ONNX AU detector: any exported AU model, described by a small YAML file.

The recipe section names the YAML (``spec = "recipes/detectors/libreface.yaml"``); the YAML
says how to feed the network and how to read it. Relative paths in it are relative to the
YAML; ``catalogue:NAME`` is the file ``factory models pull NAME`` puts in the models folder::

    name: libreface-intensity          # for reports
    path: LibreFace_AU_Encoder.onnx     # the network
    input: input                        # input name (default: the model's first input)
    output: null                        # output name (default: the first output)
    size: 224                           # network input side (or [height, width])
    resize: 256                         # optional: shorter side to this, then centre crop `size`
    layout: NCHW                        # NCHW | NHWC
    colour: RGB                         # RGB | BGR
    pixel_range: 1.0                    # pixels are scaled to [0, pixel_range] before mean/std
    mean: [0.485, 0.456, 0.406]
    std: [0.229, 0.224, 0.225]
    crop: face_crop                     # face_crop (aligned crop when present) | image
    head:                               # optional second network fed with the first's output
      path: LibreFace_AU_Intensity.onnx
      flatten: true                     # (1, 512, 1, 1) -> (1, 512)
    activation: none                    # none | sigmoid, applied to the final output
    multiply: 1.0                       # then output * multiply (e.g. 5 for a 0-1 intensity)
    vocabulary: disfa12                 # a name from stages.detectors.base.VOCABULARIES, or a list
    output_scale: intensity_0_5         # probability | binary | intensity_0_5
    licence: "USC Research License (non-commercial)"

Votes are stored under the stage name ``onnx-au``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stages.base import Record, StageConfig, StageContext, StageError
from stages.catalogue import local_path
from stages.detectors.base import VOCABULARIES, AUDetector, Scale, parse_au_name, record_image

__all__ = ["OnnxAUConfig", "OnnxAUDetector", "OnnxHead", "OnnxSpec", "load_spec", "preprocess"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnnxHead(_Strict):
    path: str
    input: str | None = None
    output: str | None = None
    flatten: bool = True


class OnnxSpec(_Strict):
    name: str = "onnx"
    path: str
    input: str | None = None
    output: str | None = None
    size: int | tuple[int, int] = 224
    resize: int | None = None
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    colour: Literal["RGB", "BGR"] = "RGB"
    pixel_range: float = Field(1.0, gt=0)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop: Literal["face_crop", "image"] = "face_crop"
    head: OnnxHead | None = None
    activation: Literal["none", "sigmoid"] = "none"
    multiply: float = 1.0
    vocabulary: str | tuple[str, ...]
    output_scale: Scale
    licence: str = "UNDECLARED: the spec names no `licence`; add one (of the network's weights)"

    @field_validator("vocabulary")
    @classmethod
    def _known_vocabulary(cls, v: str | tuple[str, ...]) -> str | tuple[str, ...]:
        if isinstance(v, str):
            if v not in VOCABULARIES:
                raise ValueError(f"unknown vocabulary name {v!r}; known: {sorted(VOCABULARIES)} or a list")
            return v
        for name in v:
            parse_au_name(name)  # raises ValueError with the allowed forms
        return v

    @field_validator("std")
    @classmethod
    def _nonzero_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s == 0 for s in v):
            raise ValueError("std values must be non-zero")
        return v

    @property
    def hw(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else self.size

    def au_names(self) -> tuple[str, ...]:
        return VOCABULARIES[self.vocabulary] if isinstance(self.vocabulary, str) else self.vocabulary


def load_spec(path: Path) -> OnnxSpec:
    """Read and validate a spec YAML; errors name the file and the field."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise StageError(f"onnx-au: spec file {path} not found (config `spec`)") from None
    except (OSError, yaml.YAMLError) as exc:
        raise StageError(f"onnx-au: cannot read spec {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise StageError(f"onnx-au: spec {path} must be a YAML mapping")
    try:
        return OnnxSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise StageError(f"onnx-au: spec {path} is invalid: {problems}") from None


def preprocess(images: list[np.ndarray], spec: OnnxSpec) -> np.ndarray:
    """uint8 RGB images -> the float32 batch the spec describes."""
    height, width = spec.hw
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    out = []
    for image in images:
        pil = Image.fromarray(image)
        if spec.resize:
            w, h = pil.size
            short = spec.resize
            pil = pil.resize(
                (short, max(1, int(short * h / w))) if w <= h else (max(1, int(short * w / h)), short),
                Image.Resampling.BILINEAR,
            )
            w, h = pil.size
            top, left = round((h - height) / 2.0), round((w - width) / 2.0)
            pil = pil.crop((left, top, left + width, top + height))
        else:
            pil = pil.resize((width, height), Image.Resampling.BILINEAR)
        arr = np.asarray(pil, dtype=np.float32) * (spec.pixel_range / 255.0)
        if spec.colour == "BGR":
            arr = arr[:, :, ::-1]
        arr = (arr - mean) / std  # mean/std are given in the network's channel order
        out.append(arr if spec.layout == "NHWC" else arr.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


class OnnxAUConfig(StageConfig):
    spec: str | None = Field(None, description="path to the detector's YAML spec")
    batch_size: int = Field(16, ge=1, le=1024)


class OnnxAUDetector(AUDetector[OnnxAUConfig]):
    name: ClassVar[str] = "onnx-au"
    # The real licence is the spec's `licence` (read in __init__, so known before setup()).
    licence = "the model spec's `licence` (LibreFace: USC Research License, non-commercial)"

    def __init__(self, config: OnnxAUConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.spec: OnnxSpec | None = None
        self.sessions: list[tuple[Any, str, str, bool]] = []  # (session, input, output, flatten)
        self.one_at_a_time = False
        if config.spec:
            self._read_spec(Path(config.spec).expanduser())

    def _read_spec(self, path: Path) -> None:
        spec = load_spec(path)
        self.spec_dir = path.parent
        self.spec = spec
        self.vocabulary = spec.au_names()
        self.scale = spec.output_scale
        resize = f"shorter side {spec.resize} then centre crop" if spec.resize else "resize"
        self.preprocessing = (
            f"{spec.crop} -> {resize} {spec.hw[0]}x{spec.hw[1]} -> {spec.colour} in [0, {spec.pixel_range}] "
            f"-> (x - {list(spec.mean)}) / {list(spec.std)} -> {spec.layout}"
        )
        self.licence = spec.licence

    def _open(self, rel: str, input_name: str | None, output_name: str | None) -> tuple[Any, str, str]:
        import onnxruntime as ort  # deferred: optional (the faces extra); only setup() opens models

        hint = ""
        if rel.startswith("catalogue:"):
            name = rel.removeprefix("catalogue:")
            try:
                path = local_path(name)
            except KeyError as exc:
                raise StageError(f"onnx-au: spec names {rel!r}, but {exc.args[0]}") from None
            hint = f"; `factory models pull {name}` puts it there"
        else:
            path = Path(rel).expanduser()
            if not path.is_absolute():
                path = self.spec_dir / path
        if not path.is_file():
            raise StageError(f"onnx-au: ONNX model {path} (from spec `path`) not found{hint}")
        providers = ["CPUExecutionProvider"]
        if self.context.device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime has its own exception types
            raise StageError(f"onnx-au: cannot load ONNX model {path}: {exc}") from exc
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if input_name is not None and input_name not in inputs:
            raise StageError(f"onnx-au: {path} has no input {input_name!r}; its inputs: {inputs}")
        if output_name is not None and output_name not in outputs:
            raise StageError(f"onnx-au: {path} has no output {output_name!r}; its outputs: {outputs}")
        return session, input_name or inputs[0], output_name or outputs[0]

    def setup(self) -> None:
        if self.spec is None:
            raise StageError(
                'onnx-au needs `spec = "path/to/detector.yaml"` in its recipe section '
                "(see stages/detectors/onnx.py for the YAML fields)"
            )
        spec = self.spec
        self.sessions = [(*self._open(spec.path, spec.input, spec.output), False)]
        # Exports with a fixed batch axis of 1 (LibreFace's) must be fed image by image.
        first = self.sessions[0][0]
        shape = next(i.shape for i in first.get_inputs() if i.name == self.sessions[0][1])
        self.one_at_a_time = bool(shape) and shape[0] == 1
        if spec.head is not None:
            self.sessions.append((*self._open(spec.head.path, spec.head.input, spec.head.output), spec.head.flatten))

    def predict(self, batch: list[Record]) -> np.ndarray:
        if not self.sessions:
            self.setup()
        spec = self.spec
        if spec is None:  # setup raised already; this keeps type checkers calm
            raise StageError("onnx-au: no spec")
        images = [record_image(r, self.name, spec.crop == "face_crop") for r in batch]
        rows = []
        step = 1 if self.one_at_a_time else self.config.batch_size
        for start in range(0, len(images), step):
            x = preprocess(images[start : start + step], spec)
            for session, input_name, output_name, flatten in self.sessions:
                if flatten:
                    x = x.reshape(x.shape[0], -1)
                x = np.asarray(session.run([output_name], {input_name: x.astype(np.float32)})[0])
            rows.append(x.reshape(x.shape[0], -1).astype(np.float64))
        out = np.concatenate(rows)
        if out.shape[1] != len(self.vocabulary):
            raise StageError(
                f"onnx-au: model output has {out.shape[1]} values per image but the spec vocabulary "
                f"names {len(self.vocabulary)}"
            )
        if spec.activation == "sigmoid":
            out = 1.0 / (1.0 + np.exp(-out))
        return out * spec.multiply
