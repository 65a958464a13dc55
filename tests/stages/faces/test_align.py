"""ArcFace alignment: insightface's norm_crop where it applies, our margin and sizes beyond it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from insightface.utils import face_align

from stages.faces.align import arcface_crop, arcface_matrix, norm_crop
from stages.faces.landmarks import detect_faces, five_points
from tests.stages.faces.test_dlib import astronaut

TEMPLATE = face_align.arcface_dst.astype(np.float64)


@pytest.fixture(scope="module")
def portrait() -> tuple[np.ndarray, np.ndarray]:
    image = astronaut()
    return image, five_points(detect_faces(image)[0].landmarks)


def _map(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_tight_112_crop_is_insightface_norm_crop(portrait: tuple[np.ndarray, np.ndarray]) -> None:
    image, points = portrait
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = face_align.norm_crop(image, points, image_size=112)
    np.testing.assert_array_equal(arcface_crop(image, points, 112), theirs)
    np.testing.assert_array_equal(norm_crop(image, points, 112), theirs)


@pytest.mark.parametrize(("size", "margin"), [(112, 0.0), (224, 0.0), (256, 0.0), (100, 0.2), (224, 0.5)])
def test_points_land_on_the_framed_template(size: int, margin: float) -> None:
    # Points that are an exact similarity of the template: the fit must put them back on it.
    angle, scale, shift = 0.3, 2.7, np.array([40.0, 25.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (TEMPLATE @ rotation.T) * scale + shift
    matrix = arcface_matrix(points, size, margin)
    assert matrix is not None
    want = ((TEMPLATE - 56.0) / (1.0 + margin) + 56.0) * size / 112
    np.testing.assert_allclose(_map(matrix, points), want, atol=1e-3)


def test_degenerate_points_give_no_crop(portrait: tuple[np.ndarray, np.ndarray]) -> None:
    image, _ = portrait
    assert arcface_matrix(np.zeros((5, 2)), 112) is None
    assert arcface_crop(image, np.zeros((5, 2)), 112) is None


def test_border_black_or_reflected(portrait: tuple[np.ndarray, np.ndarray]) -> None:
    # A wide margin on a face near the image edge reaches outside the image.
    image, points = portrait
    corner = image[: image.shape[0] // 3, : image.shape[1] // 3].copy()
    points = points - points.min(axis=0) + 2.0  # the face moved to the image's top-left corner
    black = arcface_crop(corner, points, 224, margin=1.0)
    mirrored = arcface_crop(corner, points, 224, margin=1.0, reflect_border=True)
    assert black is not None and mirrored is not None
    assert (black.sum(axis=2) == 0).mean() > 0.1
    assert (mirrored.sum(axis=2) == 0).mean() < 0.01


def test_no_deprecation_warning_from_insightface_fit(portrait: tuple[np.ndarray, np.ndarray]) -> None:
    image, points = portrait
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arcface_crop(image, points, 224)
        norm_crop(image, points, 112)
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]
