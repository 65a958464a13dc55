"""The ``warp`` generator and its AU-to-displacement model.

Landmark movements are measured on the generator's own output with dlib (re-detected, not
the model's landmarks), relative to the neutral render with the same seed, in the neutral
render's face frame (IOD units). Brow and eye AUs are measured on the astronaut only: dlib
places Grace Hopper's brow and lid points on her spectacle frames, which do not move. The
model tests take both photos as neutral (``NEUTRAL_BANK``), so a planned level moves the
landmarks by all of it; folding the astronaut's own smile is tested on its own.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from manifests.bank import NEUTRAL, IdentityBank, open_bank
from manifests.vocab import DISFA_AUS
from stages import stage_class
from stages.base import StageContext, StageError
from stages.detectors.population import population_intensities
from stages.faces.landmarks import detect_faces, face_embedding
from stages.generators.warp.mesh import displaced_points, identity_geometry
from stages.generators.warp.model import AU_MOVES, MIRROR, appearance_strokes, displacements, face_frame
from stages.generators.warp.render import piecewise_affine_map
from stages.generators.warp.stage import WarpConfig, WarpGenerator

SIZE = 384
ASTRONAUT, HOPPER = "builtin-astronaut", "builtin-grace-hopper"
# dlib's documented same-person rule: Euclidean distance < 0.6 between raw descriptors.
DLIB_SAME_PERSON = 0.6


def vector(**levels: int) -> list[int]:
    return [levels.get(f"au{a}", 0) for a in DISFA_AUS]


def neutral_bank() -> IdentityBank:
    """The builtin portraits with every photo's own expression recorded as neutral."""
    builtin = open_bank("builtin")
    return IdentityBank("builtin", None, [replace(r, expression=NEUTRAL) for r in builtin.records()])


@pytest.fixture(scope="module")
def generator() -> WarpGenerator:
    ctx = StageContext(run_dir=Path("."), identity_bank=neutral_bank(), image_size=SIZE)
    gen = WarpGenerator(WarpConfig(), ctx)
    gen.setup()
    return gen


def render(gen: WarpGenerator, identity: str, planned: list[int], seed: int = 7) -> np.ndarray:
    record = {"identity_id": identity, "planned_intensity": planned, "seed": seed}
    gen.process([record])
    return record["image"]


def landmarks(image: np.ndarray) -> np.ndarray:
    faces = detect_faces(image)
    assert len(faces) == 1
    return faces[0].landmarks.astype(np.float64)


@pytest.fixture(scope="module")
def neutral(generator: WarpGenerator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for identity in (ASTRONAUT, HOPPER):
        img = render(generator, identity, vector())
        out[identity] = (img, landmarks(img))
    return out


def moved(gen: WarpGenerator, neutral: dict, identity: str, planned: list[int]) -> np.ndarray:
    """Per-landmark displacement (68, 2) in IOD units: x towards image-right, y down."""
    lm0 = neutral[identity][1]
    origin, basis, iod = face_frame(lm0)
    lm = landmarks(render(gen, identity, planned))
    return ((lm - origin) @ basis - (lm0 - origin) @ basis) / iod


def up(d: np.ndarray, *idx: int) -> float:
    return float(-d[list(idx), 1].mean())


def outward(d: np.ndarray, left: int, right: int) -> float:
    return float((-d[left, 0] + d[right, 0]) / 2)


def mouth_opening(d: np.ndarray) -> float:
    return float(d[66, 1] - d[62, 1])


# (AU vector, identities, measurement, minimum in IOD). Minimums are about half of the
# model's E-level move (dlib follows a warp only partly) and well above dlib's jitter
# between identical faces (< 0.005 IOD here, the renders are deterministic).
CASES = {
    "AU1 raises the inner brows": (vector(au1=5), (ASTRONAUT,), lambda d: up(d, 21, 22), 0.05),
    "AU1 leaves the outer brows": (vector(au1=5), (ASTRONAUT,), lambda d: 0.03 - up(d, 17, 26), 0.0),
    "AU2 raises the outer brows": (vector(au2=5), (ASTRONAUT,), lambda d: up(d, 17, 26), 0.05),
    "AU4 lowers the inner brows": (vector(au4=5), (ASTRONAUT,), lambda d: -up(d, 21, 22), 0.03),
    "AU4 draws the brows together": (vector(au4=5), (ASTRONAUT,), lambda d: -outward(d, 21, 22), 0.005),
    "AU5 raises the upper lids": (vector(au5=5), (ASTRONAUT,), lambda d: up(d, 37, 38, 43, 44), 0.02),
    "AU6 raises the lower lids": (vector(au6=5), (ASTRONAUT,), lambda d: up(d, 40, 41, 46, 47), 0.015),
    "AU9 lifts the nostril wings": (vector(au9=5), (ASTRONAUT, HOPPER), lambda d: up(d, 31, 35), 0.02),
    "AU12 lifts the lip corners": (vector(au12=5), (ASTRONAUT, HOPPER), lambda d: up(d, 48, 54), 0.05),
    "AU12 pulls the corners out": (vector(au12=5), (ASTRONAUT, HOPPER), lambda d: outward(d, 48, 54), 0.03),
    "AU15 lowers the lip corners": (vector(au15=5), (ASTRONAUT, HOPPER), lambda d: -up(d, 48, 54), 0.04),
    "AU17 raises the chin": (vector(au17=5), (ASTRONAUT, HOPPER), lambda d: up(d, 7, 8, 9), 0.025),
    # dlib follows Grace Hopper's thin, wrinkled lip corners only a little (0.016-0.048 IOD
    # over seeds 1, 7, 11, 20 vs 0.06-0.075 on the astronaut), hence measured on the astronaut.
    "AU20 stretches the lips": (vector(au20=5), (ASTRONAUT,), lambda d: outward(d, 48, 54), 0.03),
    "AU25 parts the lips": (vector(au25=5), (ASTRONAUT, HOPPER), mouth_opening, 0.04),
    "AU26 opens the mouth": (vector(au25=5, au26=5), (ASTRONAUT, HOPPER), mouth_opening, 0.15),
    "AU26 drops the chin": (vector(au25=5, au26=5), (ASTRONAUT, HOPPER), lambda d: -up(d, 8), 0.15),
}


@pytest.mark.parametrize("case", list(CASES))
def test_au_moves_the_right_landmarks(case: str, generator: WarpGenerator, neutral: dict) -> None:
    planned, identities, measure, minimum = CASES[case]
    for identity in identities:
        value = measure(moved(generator, neutral, identity, planned))
        assert value > minimum, f"{case} on {identity}: measured {value:.3f} IOD"


def test_intensity_orders_the_movement(generator: WarpGenerator, neutral: dict) -> None:
    lifts = [up(moved(generator, neutral, ASTRONAUT, vector(au12=k)), 48, 54) for k in (1, 3, 5)]
    assert lifts[0] < lifts[1] < lifts[2]


@pytest.mark.parametrize("identity", [ASTRONAUT, HOPPER])
def test_keeps_identity(identity: str, generator: WarpGenerator) -> None:
    bank = generator.context.identity_bank
    photos = {i: bank.image(i) for i in (ASTRONAUT, HOPPER)}
    ref = {i: face_embedding(p, landmarks(p), normalize=False) for i, p in photos.items()}
    other = HOPPER if identity == ASTRONAUT else ASTRONAUT
    for planned in (
        vector(au6=4, au12=5, au25=3),  # happiness
        vector(au1=5, au2=5, au5=4, au25=5, au26=5),  # surprise
        vector(au4=5, au9=4, au15=3, au17=4),
    ):  # disgust / anger mix
        img = render(generator, identity, planned, seed=11)
        emb = face_embedding(img, landmarks(img), normalize=False)
        assert np.linalg.norm(emb - ref[identity]) < DLIB_SAME_PERSON
        assert np.linalg.norm(emb - ref[other]) > DLIB_SAME_PERSON


def test_deterministic_per_seed(generator: WarpGenerator) -> None:
    planned = vector(au1=2, au12=4, au25=3)
    a = render(generator, HOPPER, planned, seed=5)
    fresh = WarpGenerator(WarpConfig(), generator.context)  # no shared cache
    b = render(fresh, HOPPER, planned, seed=5)
    np.testing.assert_array_equal(a, b)
    c = render(generator, HOPPER, planned, seed=6)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1.0  # jitter differs per seed
    still = WarpGenerator(WarpConfig(jitter=0.0), generator.context)
    np.testing.assert_array_equal(render(still, HOPPER, planned, seed=5), render(still, HOPPER, planned, seed=6))


def test_record_fields(generator: WarpGenerator) -> None:
    planned = vector(au4=3, au17=1)
    records = [
        {"identity_id": ASTRONAUT, "planned_intensity": np.array(planned, np.int8), "seed": 1},
        {"identity_id": ASTRONAUT, "planned_intensity": planned, "seed": 2, "dropped_by": "prompt"},
        {"identity_id": ASTRONAUT, "planned_intensity": [0] * 11 + [7], "seed": 3},
    ]
    out = generator.process(records)
    assert len(out) == 3
    r = out[0]
    assert r["image"].shape == (SIZE, SIZE, 3) and r["image"].dtype == np.uint8
    assert r["generator"] == "warp" and r["label_source"] == "exact"
    assert r["generator_intensity"] == [float(v) for v in planned]
    assert r["generator_occurrence"] == [1.0 if v else 0.0 for v in planned]
    assert "image" not in out[1] and out[1]["dropped_by"] == "prompt"
    assert out[2]["dropped_by"] == "warp" and "0-5" in out[2]["drop_reason"]


def test_image_size_option(generator: WarpGenerator) -> None:
    small = WarpGenerator(WarpConfig(image_size=96), generator.context)
    assert render(small, HOPPER, vector(au12=3)).shape == (96, 96, 3)


def test_mouth_interior_is_dark_with_upper_teeth(generator: WarpGenerator) -> None:
    planned = vector(au25=5, au26=5)
    with_cavity = render(generator, HOPPER, planned)
    lm = landmarks(with_cavity)
    plain = WarpGenerator(WarpConfig(mouth_interior=False), generator.context)
    without = render(plain, HOPPER, planned)

    def column(image: np.ndarray, channels: slice = slice(None)) -> np.ndarray:
        """Brightness down the mouth's centre line."""
        x, top, bottom = int(lm[62, 0]), int(lm[62, 1]), int(lm[66, 1])
        return image[top:bottom, x - 2 : x + 3, channels].mean(axis=(1, 2))

    col = column(with_cavity)
    third = max(len(col) // 3, 1)
    # Cavity: the lower two thirds are dark, and far less red than the lips the warp
    # stretches over the opening without it.
    assert col[third:].mean() < 60
    red = slice(0, 1)
    assert column(with_cavity, red)[third:].mean() < column(without, red)[third:].mean() - 50
    # A hint of upper teeth: the top third of the opening is much brighter than the rest.
    assert col[:third].max() > col[third:].mean() + 80


def test_appearance_cues_shade_the_furrows(generator: WarpGenerator) -> None:
    planned = vector(au4=5, au9=5)
    plain = WarpGenerator(WarpConfig(appearance_cues=False), generator.context)
    shaded, flat = render(generator, ASTRONAUT, planned), render(plain, ASTRONAUT, planned)
    lm = landmarks(flat)
    y0, y1 = int(lm[21:23, 1].mean()) - 10, int(lm[28, 1])
    x0, x1 = int(lm[21, 0]), int(lm[22, 0])
    region = (slice(y0, y1), slice(x0, x1))  # glabella and nasal root
    assert shaded[region].mean() < flat[region].mean() - 3
    far = (slice(SIZE - 40, SIZE), slice(0, 40))  # a corner far from any cue
    np.testing.assert_array_equal(shaded[far], flat[far])


def _write_bank(folder: Path, images: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "identities.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["identity_id", "image", "ethnicity", "age_band", "gender", "source", "licence"])
        for ident, image in images.items():
            w.writerow([ident, image, "white", "adult", "female", "test", "test"])
    return folder


def test_rejects_unusable_identity_photos(tmp_path: Path) -> None:
    Image.fromarray(np.full((300, 300, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    bank = open_bank(str(_write_bank(tmp_path, {"grey-person": "grey.png", "broken": "broken.jpg"})))
    ctx = StageContext(run_dir=tmp_path, identity_bank=bank, image_size=64)
    gen = WarpGenerator(WarpConfig(), ctx)
    gen.setup()
    with pytest.raises(StageError, match=r"'grey-person'.*grey\.png.*no face"):
        gen.process([{"identity_id": "grey-person", "planned_intensity": vector(), "seed": 0}])
    with pytest.raises(StageError, match=r"broken\.jpg"):
        gen.process([{"identity_id": "broken", "planned_intensity": vector(), "seed": 0}])
    dropper = WarpGenerator(WarpConfig(on_bad_identity="drop"), ctx)
    out = dropper.process([{"identity_id": "grey-person", "planned_intensity": vector(), "seed": 0}])
    assert out[0]["dropped_by"] == "warp" and "grey.png" in out[0]["drop_reason"]
    assert "image" not in out[0]


def test_identity_cache_is_bounded(generator: WarpGenerator) -> None:
    gen = WarpGenerator(WarpConfig(identity_cache=1, image_size=64), generator.context)
    render(gen, ASTRONAUT, vector())
    render(gen, HOPPER, vector())
    assert list(gen._geometry) == [HOPPER]
    assert render(gen, ASTRONAUT, vector(), seed=3).shape == (64, 64, 3)  # re-prepared on demand
    assert list(gen._geometry) == [ASTRONAUT]


def _population(image: np.ndarray) -> dict[int, float]:
    levels = population_intensities(landmarks(image))
    return {au: float(levels[DISFA_AUS.index(au)]) for au in (12, 25)}


def test_own_expression_is_folded_into_the_labels() -> None:
    """The astronaut smiles with parted lips (her bank row: AU12=3 AU25=5). A plan of all
    zeros must not be labelled AU12 = 0 on her smiling render: her own AUs are the floor of
    every label, and only what a label adds to them is rendered."""
    gen = WarpGenerator(
        WarpConfig(image_size=SIZE), StageContext(run_dir=Path("."), identity_bank=open_bank("builtin"))
    )
    plain, smile, hopper = (
        {"identity_id": ASTRONAUT, "planned_intensity": vector(), "seed": 7},
        {"identity_id": ASTRONAUT, "planned_intensity": vector(au12=5, au4=2), "seed": 7},
        {"identity_id": HOPPER, "planned_intensity": vector(), "seed": 7},
    )
    gen.process([plain, smile, hopper])
    assert plain["generator_intensity"] == [float(v) for v in vector(au12=3, au25=5)]
    assert _population(plain["image"])[12] >= 1 and _population(plain["image"])[25] >= 2  # the image smiles
    assert smile["generator_intensity"] == [float(v) for v in vector(au12=5, au25=5, au4=2)]
    assert hopper["generator_intensity"] == [0.0] * 12  # her portrait is neutral
    # A render of the bare photo moves nothing: only label - own is added.
    same = WarpGenerator(WarpConfig(image_size=SIZE), StageContext(run_dir=Path("."), identity_bank=neutral_bank()))
    np.testing.assert_array_equal(render(same, ASTRONAUT, vector()), plain["image"])


def test_unrecorded_expression_is_measured_and_reject_refuses(caplog: pytest.LogCaptureFixture) -> None:
    unrecorded = IdentityBank("builtin", None, [replace(r, expression="") for r in open_bank("builtin").records()])
    context = StageContext(run_dir=Path("."), identity_bank=unrecorded, image_size=64)
    gen = WarpGenerator(WarpConfig(image_size=64), context)
    with caplog.at_level("WARNING", logger="stages.generators.warp.stage"):
        plain = {"identity_id": ASTRONAUT, "planned_intensity": vector(), "seed": 0}
        gen.process([plain])
        render(gen, HOPPER, vector())
    messages = [r.getMessage() for r in caplog.records]
    assert any("builtin-astronaut" in m and "AU12=3 AU25=5" in m for m in messages)
    assert not any("builtin-grace-hopper" in m for m in messages)
    assert plain["generator_intensity"] == [float(v) for v in vector(au12=3, au25=5)]
    strict = WarpGenerator(WarpConfig(image_size=64, non_neutral_identity="reject", on_bad_identity="drop"), context)
    out = strict.process([{"identity_id": i, "planned_intensity": vector(), "seed": 0} for i in (ASTRONAUT, HOPPER)])
    assert out[0]["dropped_by"] == "warp" and "not neutral" in out[0]["drop_reason"]
    assert out[1]["image"].shape == (64, 64, 3)


def test_needs_an_identity_bank(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"identities\.bank"):
        WarpGenerator(WarpConfig(), StageContext(run_dir=tmp_path)).setup()


def test_registered_with_defaults() -> None:
    cls = stage_class("warp")
    assert cls is WarpGenerator and cls.kind == "generator"
    assert cls.config_model() == WarpConfig()
    with pytest.raises(ValueError):
        WarpConfig(jiter=1.0)  # typo is refused


def test_piecewise_map_matches_skimage() -> None:
    from scipy.spatial import Delaunay
    from skimage.transform import PiecewiseAffineTransform

    rng = np.random.default_rng(0)
    grid = np.array([[x, y] for x in (0, 20, 40, 63) for y in (0, 20, 40, 63)], float)
    src = grid + np.r_[np.zeros((1, 2)), rng.uniform(-2, 2, (len(grid) - 1, 2))]
    src[[0, 3, 12, 15]] = grid[[0, 3, 12, 15]]  # corners fixed
    dst = src + rng.uniform(-3, 3, src.shape) * (np.abs(grid - 31.5).max(axis=1) < 30)[:, None]
    simplices = Delaunay(dst).simplices
    map_x, map_y = piecewise_affine_map(dst, src, simplices, (64, 64))
    tform = PiecewiseAffineTransform.from_estimate(dst, src)
    ys, xs = np.mgrid[0:64, 0:64]
    expected = tform(np.c_[xs.ravel(), ys.ravel()]).reshape(64, 64, 2)
    inside = Delaunay(dst).find_simplex(np.c_[xs.ravel(), ys.ravel()]).reshape(64, 64) >= 0
    err = np.hypot(map_x - expected[..., 0], map_y - expected[..., 1])[inside]
    # Identical inside the triangles; pixels on a shared edge may be rasterised into the
    # neighbouring triangle, whose affine agrees on the edge and differs off it by < 0.25 px.
    assert np.mean(err < 1e-3) > 0.9
    assert err.max() < 0.25


def test_model_is_mirror_symmetric_and_linear() -> None:
    for au in DISFA_AUS:
        d = displacements(vector(**{f"au{au}": 5}))
        assert np.abs(d).max() > 0.02, f"AU{au} moves nothing"
        np.testing.assert_allclose(d[MIRROR, 0], -d[:, 0], atol=1e-12)
        np.testing.assert_allclose(d[MIRROR, 1], d[:, 1], atol=1e-12)
        np.testing.assert_allclose(displacements(vector(**{f"au{au}": 2})), d * 0.4)
        assert AU_MOVES[au].facs
    both = displacements(vector(au1=3, au26=4))
    np.testing.assert_allclose(both, displacements(vector(au1=3)) + displacements(vector(au26=4)))
    with pytest.raises(ValueError, match="12 intensities"):
        displacements([1, 2, 3])


def _signed_areas(points: np.ndarray, simplices: np.ndarray) -> np.ndarray:
    a, b, c = (points[simplices[:, k]] for k in range(3))
    return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])


@pytest.mark.parametrize("identity", [ASTRONAUT, HOPPER])
def test_no_triangle_folds(identity: str, generator: WarpGenerator, neutral: dict) -> None:
    """No AU combination turns a mesh triangle inside out (which would smear the image)."""
    photo = generator.context.identity_bank.image(identity)
    geom = identity_geometry(identity, photo, landmarks(photo))
    before = np.sign(_signed_areas(geom.points, geom.simplices))
    rng = np.random.default_rng(0)
    vectors = [[5] * 12] + [vector(**{f"au{a}": 5}) for a in DISFA_AUS]
    vectors += [list(rng.integers(0, 6, 12) * (rng.random(12) < 0.4)) for _ in range(200)]
    for planned in vectors:
        after = np.sign(_signed_areas(displaced_points(geom, planned), geom.simplices))
        assert np.array_equal(before, after), f"fold for {planned}"
    # The lips never cross: each lower inner-lip point stays below its upper partner.
    pts = displaced_points(geom, vector(au12=5, au17=5))
    assert all(pts[lo, 1] > pts[up, 1] for up, lo in ((61, 67), (62, 66), (63, 65)))


def test_appearance_strokes_follow_active_aus(neutral: dict) -> None:
    lm = neutral[ASTRONAUT][1]
    assert appearance_strokes(lm, vector()) == []
    weak, strong = appearance_strokes(lm, vector(au4=1)), appearance_strokes(lm, vector(au4=5))
    assert len(weak) == len(strong) > 0
    assert strong[0].darkness == pytest.approx(5 * weak[0].darkness)
