"""One contract for every stage in ``stages.REGISTRY`` (as img2dataset tests all its writers).

Per registry entry: the class's ``name`` is its key; its ``kind`` is what the recipe
section it is chosen in holds; its config is its own model and refuses unknown keys;
``process`` returns the same record objects in the same order, leaves records an earlier
stage dropped untouched, and every record it drops carries ``dropped_by == name`` and a
reason. Its declared data flow holds on live records: every field it sets (added, replaced or
changed in place) is in its ``writes``, and every field it reads before setting it is in its
``reads`` or ``optional_reads`` (``key``, the sample's name, and the drop fields excepted).
Stages that need model files run on the tiny random-weight models the stage tests
build, made once per session. ``CASES`` must name every registry entry: a new stage fails
here until it has a case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from bench.tiny_models import build_tiny_fineface, build_tiny_magicface, build_tiny_maugen, build_tiny_sd
from manifests.bank import open_bank
from manifests.schema import RECORD_FIELDS
from stages import REGISTRY, stage_class
from stages.base import DROP_FIELDS, Record, StageConfig, StageContext
from stages.detectors.opengraphau.model import ARCHS, build_mefarg
from stages.faces.landmarks import arcface_crop_68, detect_faces
from stages.pipeline import StageSpec, build_stage, path_kind
from stages.realism.learned import build_classifier
from tests.stages.detectors.test_onnx import TinyAU
from tests.stages.detectors.test_onnx import _export as export_onnx_au
from tests.stages.detectors.test_opengraphau import TINY as TINY_OPENGRAPHAU
from tests.stages.faces.tiny_scrfd import GREEN, export_tiny_scrfd, paint_face
from tests.stages.prompt.plans import make_records
from tests.stages.tracked import TrackedRecord, changed_fields, snapshot

IDS = ("builtin-astronaut", "builtin-grace-hopper")
SIZE = 64  # generator output side: small, every tiny model accepts it


@dataclass(frozen=True)
class Case:
    """How to run one registered stage: where a recipe puts it, its options and context
    (model files are built under the session folder), a live batch, and which of its
    records the stage must drop (empty: it drops nothing by design, ``why`` says why)."""

    path: str
    options: Callable[[Path], dict[str, Any]]
    records: Callable[[], list[Record]]
    drops: tuple[int, ...]
    why: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


# ---------------------------------------------------------------- inputs, built once


@cache
def bank() -> Any:
    return open_bank("builtin")


@cache
def _faces() -> tuple[tuple[str, np.ndarray, np.ndarray], ...]:
    """(identity, exemplar photo, its 68 dlib landmarks) of the builtin identities."""
    out = []
    for identity in IDS:
        image = np.asarray(bank().image(identity))
        out.append((identity, image, detect_faces(image)[0].landmarks))
    return tuple(out)


def grey(side: int = 96) -> np.ndarray:
    return np.full((side, side, 3), 128, dtype=np.uint8)  # no face anywhere


def plans(n: int = 3) -> list[Record]:
    return [
        {**r, "identity_id": IDS[i % 2], "description": "a photo of a face smiling"}
        for i, r in enumerate(make_records(n))
    ]


def photos() -> list[Record]:
    """The two builtin portraits (one face each) and a flat grey image (no face)."""
    out = [{"key": identity, "identity_id": identity, "image": image} for identity, image, _ in _faces()]
    return [*out, {"key": "grey", "identity_id": IDS[0], "image": grey()}]


def landmarked() -> list[Record]:
    return [
        {"key": identity, "identity_id": identity, "image": image, "face_crop": image[:224, :224], "landmarks": lm}
        for identity, image, lm in _faces()
    ]


def labelled() -> list[Record]:
    """Records as the agreement and filter stages see them (votes, plan, realism)."""
    planned = [0] * 6 + [3] + [0] * 5  # AU12
    vote = {"occurrence": [0.1] * 6 + [0.9] + [0.1] * 5, "intensity": [0.0] * 6 + [3.0] + [0.0] * 5}
    out = []
    for i, realism in enumerate((0.9, 0.8, 0.1)):  # the last one is not realistic enough
        occurrence = [0] * 6 + [1] + [0] * 5
        out.append(
            {
                "key": f"r{i}",
                "planned_intensity": planned,
                "label_source": "planned",
                "detector_votes": {"a": vote, "b": vote},
                "consensus_occurrence": occurrence,
                "realism_score": realism,
            }
        )
    return out


def portraits() -> list[Record]:
    """As the portrait filters see them: the smiling astronaut (dropped), Grace Hopper neutral
    and realistic (kept), and again with a low realism score (dropped)."""
    quiet = {"occurrence": [0.05] * 12, "intensity": [0.0] * 12}
    smiling = {"occurrence": [0.05] * 6 + [0.95] + [0.05] * 5, "intensity": [0.0] * 6 + [3.0] + [0.0] * 5}
    (astronaut, a_image, a_lm), (hopper, h_image, h_lm) = _faces()
    rows = (
        (astronaut, a_image, a_lm, smiling, 0.9),
        (hopper, h_image, h_lm, quiet, 0.9),
        (hopper, h_image, h_lm, quiet, 0.1),
    )
    return [
        {
            "key": f"p{i}",
            "identity_id": identity,
            "image": image,
            "landmarks": lm,
            "face_crop": arcface_crop_68(image, lm, 224),
            "detector_votes": {"geometric": vote},
            "realism_score": realism,
        }
        for i, (identity, image, lm, vote, realism) in enumerate(rows)
    ]


# ---------------------------------------------------------------- models, built once


@cache
def tiny_sd(root: Path) -> Path:
    return build_tiny_sd(root / "sd" / "pipeline")


@cache
def tiny_maugen(root: Path) -> Path:
    return build_tiny_maugen(root / "maugen" / "release")


@cache
def tiny_fineface(root: Path) -> Path:
    return build_tiny_fineface(root / "fineface")


@cache
def tiny_magicface(root: Path) -> Path:
    return build_tiny_magicface(root / "magicface")


@cache
def tiny_scrfd(root: Path) -> Path:
    (root / "scrfd").mkdir(exist_ok=True)
    return export_tiny_scrfd(root / "scrfd" / "painted.onnx")


def painted() -> list[Record]:
    """For the tiny SCRFD model: one painted face, two faces of similar size, no face."""
    one, two, none = (np.full((320, 320, 3), 128, np.uint8) for _ in range(3))
    paint_face(one, 16, 6, 10)
    paint_face(two, 16, 6, 10)
    paint_face(two, 32, 2, 2, GREEN)
    return [
        {"key": key, "identity_id": IDS[0], "image": image}
        for key, image in (("one", one), ("two", two), ("none", none))
    ]


@cache
def opengraphau_checkpoint(root: Path) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        _tiny_opengraphau(mp)
        torch.manual_seed(1)
        net = build_mefarg("resnet50")
    path = root / "opengraphau.pth"
    torch.save({"state_dict": net.state_dict()}, path)
    return path


def _tiny_opengraphau(mp: pytest.MonkeyPatch) -> None:
    mp.setitem(ARCHS, "resnet50", TINY_OPENGRAPHAU["resnet50"])


@cache
def onnx_spec(root: Path) -> Path:
    torch.manual_seed(0)
    folder = root / "onnx"
    folder.mkdir(exist_ok=True)
    export_onnx_au(TinyAU(), torch.zeros(1, 3, 32, 32), folder / "au.onnx")
    spec = {
        "path": "au.onnx",
        "size": 32,
        "vocabulary": ["AU1", "AU12", "AU25", "AU45"],
        "output_scale": "probability",
        "activation": "sigmoid",
        "licence": "MIT (test)",
    }
    (folder / "au.yaml").write_text(yaml.safe_dump(spec))
    return folder / "au.yaml"


@cache
def realism_checkpoint(root: Path) -> Path:
    torch.manual_seed(0)
    net = build_classifier("resnet18").eval()
    meta = {"input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "trained_on": {"note": "random"}}
    path = root / "realism.pt"
    torch.save({"arch": "resnet18", "state_dict": net.state_dict(), **meta}, path)
    return path


# ---------------------------------------------------------------- the table

NEVER_DROPS_DETECTOR = "a detector votes (missing votes when it cannot see), it never rejects"
NEVER_DROPS_REALISM = "a realism scorer only scores; the filters threshold"
WITH_BANK = {"identity_bank": "builtin", "image_size": SIZE}

CASES: dict[str, Case] = {
    "prompt": Case(
        "prompt",
        lambda root: {},
        lambda: [*plans(2), {**plans(1)[0], "key": "bad", "emotion": "bogus"}],
        drops=(2,),
    ),
    "warp": Case(
        "generator",
        lambda root: {"image_size": SIZE},
        lambda: [*plans(2), {**plans(1)[0], "planned_intensity": [9] * 12}],
        drops=(2,),
        context=WITH_BANK,
    ),
    "diffusers": Case(
        "generator",
        lambda root: {"pipeline": str(tiny_sd(root)), "steps": 2},
        lambda: plans(2),
        drops=(),
        why="a text-to-image pipeline draws every prompt; it has nothing to reject",
        context={"image_size": SIZE},
    ),
    "maugen": Case(
        "generator",
        lambda root: {"checkpoint_dir": str(tiny_maugen(root)), "steps": 2},
        lambda: [*plans(2), {**plans(1)[0], "identity_id": "not-in-the-bank"}],
        drops=(2,),
        context=WITH_BANK,
    ),
    "fineface": Case(
        "generator",
        lambda root: {
            "base_dir": str(tiny_fineface(root) / "stable-diffusion-2-1-base"),
            "weights_dir": str(tiny_fineface(root) / "fineface"),
            "steps": 2,
        },
        lambda: plans(2),
        drops=(),
        why="without identity conditioning an AU-conditioned text-to-image model draws every plan",
        context={"image_size": SIZE},
    ),
    "magicface": Case(
        "generator",
        lambda root: {
            "sd_dir": str(tiny_magicface(root) / "stable-diffusion-v1-5"),
            "weights_dir": str(tiny_magicface(root) / "magicface"),
            "steps": 2,
        },
        lambda: [*plans(2), {**plans(1)[0], "identity_id": "not-in-the-bank"}],
        drops=(2,),
        context=WITH_BANK,
    ),
    "dlib": Case("face", lambda root: {}, photos, drops=(2,)),
    "lbp": Case("face", lambda root: {}, photos, drops=(2,)),
    # The tiny model detects painted squares: two faces of similar size and no face drop.
    "scrfd": Case("face", lambda root: {"model": str(tiny_scrfd(root)), "det_size": 320}, painted, drops=(1, 2)),
    "geometric": Case(
        "detectors[0]", lambda root: {}, landmarked, drops=(), why=NEVER_DROPS_DETECTOR, context=WITH_BANK
    ),
    "appearance": Case(
        "detectors[1]", lambda root: {}, landmarked, drops=(), why=NEVER_DROPS_DETECTOR, context=WITH_BANK
    ),
    "opengraphau": Case(
        "detectors[0]",
        lambda root: {"checkpoint": str(opengraphau_checkpoint(root)), "backbone": "resnet50"},
        landmarked,
        drops=(),
        why=NEVER_DROPS_DETECTOR,
        patch=_tiny_opengraphau,
    ),
    "onnx-au": Case(
        "detectors[0]", lambda root: {"spec": str(onnx_spec(root))}, landmarked, drops=(), why=NEVER_DROPS_DETECTOR
    ),
    "agreement": Case(
        "agreement",
        lambda root: {},
        labelled,
        drops=(),
        why="disagreeing detectors make uncertain labels, not rejections; the filters judge the sample",
    ),
    "heuristic-realism": Case("realism", lambda root: {}, landmarked, drops=(), why=NEVER_DROPS_REALISM),
    "learned-realism": Case(
        "realism",
        lambda root: {"checkpoint": str(realism_checkpoint(root))},
        landmarked,
        drops=(),
        why=NEVER_DROPS_REALISM,
    ),
    "filters": Case("filters", lambda root: {}, labelled, drops=(2,)),
    "portrait-filters": Case("filters", lambda root: {}, portraits, drops=(0, 2)),
}


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contract_models")


def _context(case: Case, run_dir: Path) -> StageContext:
    extra = dict(case.context)
    if extra.get("identity_bank") == "builtin":
        extra["identity_bank"] = bank()
    return StageContext(run_dir=run_dir, **extra)


def test_every_registered_stage_has_a_case() -> None:
    assert set(CASES) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_name_kind_and_config(name: str) -> None:
    cls = stage_class(name)
    assert cls.name == name
    case = _case(name)
    assert cls.kind == path_kind(case.path), f"{name} is a {cls.kind} stage but is chosen in [{case.path}]"
    assert cls.config_model is not StageConfig and issubclass(cls.config_model, StageConfig)
    with pytest.raises(ValidationError, match="no_such_option"):
        cls.config_model(no_such_option=1)


def _case(name: str) -> Case:
    if name not in CASES:
        pytest.fail(f"stage {name!r} is registered but has no contract case; add one to CASES")
    return CASES[name]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_process_keeps_the_batch_and_records_its_drops(
    name: str, models_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = _case(name)
    if case.patch is not None:
        case.patch(monkeypatch)
    stage = build_stage(StageSpec(case.path, name, case.options(models_root)), _context(case, tmp_path))
    live: list[Record] = [TrackedRecord(r) for r in case.records()]
    snapshots = [snapshot(r) for r in live]
    earlier = {**case.records()[0], "key": "earlier", "dropped_by": "an-earlier-stage", "drop_reason": "dropped before"}
    before = dict(earlier)
    batch = [earlier, *live]
    objects = [id(r) for r in batch]

    out = stage.process(batch)

    assert [id(r) for r in out] == objects  # same records, same order, same length
    assert earlier.keys() == before.keys() and all(earlier[k] is before[k] for k in before)
    dropped = tuple(i for i, r in enumerate(live) if r.get("dropped_by"))
    assert dropped == case.drops, case.why or f"{name} should drop records {case.drops}, dropped {dropped}"
    for i in dropped:
        assert live[i]["dropped_by"] == name
        assert isinstance(live[i]["drop_reason"], str) and live[i]["drop_reason"].strip()
    _assert_declared_flow(stage_class(name), live, snapshots)


def _assert_declared_flow(cls: type, live: list[Record], snapshots: list[dict[str, bytes]]) -> None:
    """What the stage did to ``live`` is what its class declares (see the module docstring)."""
    assert cls.writes <= RECORD_FIELDS and cls.reads <= RECORD_FIELDS and cls.optional_reads <= RECORD_FIELDS
    set_fields = set().union(*(changed_fields(before, r) for before, r in zip(snapshots, live, strict=True)))
    undeclared_writes = set_fields - cls.writes - DROP_FIELDS
    assert not undeclared_writes, f"{cls.name} sets {sorted(undeclared_writes)} but does not declare them in `writes`"
    read_first = set().union(*(r.read_first for r in live if isinstance(r, TrackedRecord)))
    undeclared_reads = read_first - cls.reads - cls.optional_reads - DROP_FIELDS - {"key"}
    assert not undeclared_reads, (
        f"{cls.name} reads {sorted(undeclared_reads)} but declares them in neither `reads` nor `optional_reads`"
    )


def test_a_subclass_of_a_stage_keeps_the_config_model_it_sets() -> None:
    """A plugin extending a registered stage with options of its own: its model, not the parent's
    (the parent's ``Stage[Config]`` base must not be read as the subclass's)."""
    parent = stage_class("magicface")

    class ExtendedConfig(parent.config_model):  # type: ignore[name-defined,misc]
        extra_option: int = 0

    class Extended(parent):  # type: ignore[valid-type,misc]
        config_model = ExtendedConfig

    class Plain(parent):  # type: ignore[valid-type,misc]
        pass

    assert Extended.config_model is ExtendedConfig and Plain.config_model is parent.config_model
    assert Extended.config_model(extra_option=3).extra_option == 3  # type: ignore[call-arg,attr-defined]
