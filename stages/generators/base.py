"""The generator kind: a stage that makes each record's image and the labels it knows.

:class:`GeneratorStage` sets ``kind = "generator"`` and gives every generator the same
output (:meth:`GeneratorStage.write_sample`: ``image``, ``generator``, ``label_source``,
``generator_occurrence``, ``generator_intensity``, its declared ``writes``) and the same
timing note (:meth:`GeneratorStage.note_timing`: of the last ``process`` call, how much wall
time the model took; the benchmarks read it). The helpers below are shared by the
model-backed generators (diffusers, maugen, fineface), so no generator imports another.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import yaml

from stages.base import Kind, Record, Stage, StageConfig, StageContext, StageError

__all__ = [
    "DType",
    "ForwardTimer",
    "GeneratorStage",
    "chunks",
    "model_card_licence",
    "planned_labels",
    "resolve_dtype",
    "scheduler_by_name",
    "to_uint8",
]

C = TypeVar("C", bound=StageConfig)
DType = Literal["auto", "float16", "bfloat16", "float32"]


def resolve_dtype(dtype: str, device: str) -> Any:
    """The torch dtype for ``dtype`` on ``device``: CPU is always float32 (half is slow or unsupported)."""
    import torch  # deferred: optional and heavy (the gen extra); only model-backed generators call this

    if not device.startswith("cuda"):
        return torch.float32
    if dtype == "auto":
        return torch.float16
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]


def model_card_licence(folder: Path) -> str | None:
    """The ``license`` of a Hugging Face model folder's card (``README.md`` YAML front matter),
    or ``None`` when the folder has no card or the card names none."""
    try:
        text = (Path(folder).expanduser() / "README.md").read_text(encoding="utf-8")
    except OSError:
        return None
    if not text.startswith("---"):
        return None
    head = text[3:].split("\n---", 1)[0]
    try:
        meta = yaml.safe_load(head)
    except yaml.YAMLError:
        return None
    found = meta.get("license") if isinstance(meta, dict) else None
    if isinstance(found, list):
        found = ", ".join(str(x) for x in found)
    return str(found) if found else None


def planned_labels(planned: Sequence[int]) -> tuple[list[float], list[float]]:
    """(occurrence, intensity) floats from a planned intensity vector (0 = inactive)."""
    intensity = [float(x) for x in planned]
    return [1.0 if x > 0 else 0.0 for x in intensity], intensity


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] ``(B, H, W, 3)`` to uint8."""
    return (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)


class GeneratorStage(Stage[C]):
    """Base of every generator: the record fields it writes and its last call's timing."""

    kind: ClassVar[Kind] = "generator"
    writes = frozenset({"image", "generator", "label_source", "generator_occurrence", "generator_intensity"})

    def __init__(self, config: C, context: StageContext) -> None:
        super().__init__(config, context)
        self.last_timing: dict[str, float] = {}

    def write_sample(
        self,
        record: Record,
        image: np.ndarray,
        label_source: str,
        occurrence: Sequence[float],
        intensity: Sequence[float],
    ) -> None:
        """The generated image and the generator's 12 AU labels, in DISFA order."""
        record["image"] = image
        record["generator"] = self.name
        record["label_source"] = label_source
        record["generator_occurrence"] = list(occurrence)
        record["generator_intensity"] = list(intensity)

    def note_timing(self, samples: int, model_s: float, started: float) -> None:
        """Record one call: ``samples`` generated, ``model_s`` inside the model, since ``started``."""
        total = time.perf_counter() - started
        self.last_timing = {
            "batch_size": float(samples),
            "model_s": model_s,
            "total_s": total,
            "overhead_s": max(total - model_s, 0.0),
        }


class ForwardTimer:
    """Accumulates wall seconds spent inside a module's ``forward`` (hooks, CUDA-synchronised).

    Synchronising once per call costs little: the denoising loop is sequential anyway.
    """

    def __init__(self, module: Any, device: str) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._cuda = device.startswith("cuda")
        self._start = 0.0
        self._handles = [
            module.register_forward_pre_hook(self._pre),
            module.register_forward_hook(self._post),
        ]

    def _sync(self) -> None:
        if self._cuda:
            import torch  # deferred: optional and heavy (the gen extra)

            torch.cuda.synchronize()

    def _pre(self, *_: Any) -> None:
        self._sync()
        self._start = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._start
        self.calls += 1

    @contextmanager
    def measure(self) -> Iterator[ForwardTimer]:
        """Reset, then count the forwards inside the block."""
        self.seconds, self.calls = 0.0, 0
        yield self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def scheduler_by_name(name: str, config: Any) -> Any:
    """The diffusers scheduler class ``name`` built from ``config``; a StageError lists the known ones."""
    import diffusers  # deferred: optional and heavy (the gen extra)

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler"))
        raise StageError(
            f"generator.scheduler={name!r} is not a diffusers scheduler class; use one of: {', '.join(known)}"
        )
    return cls.from_config(config)
