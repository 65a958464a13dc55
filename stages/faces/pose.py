"""Head pose (yaw, pitch, roll in degrees) from 68 iBUG landmarks.

OpenCV's ``solvePnP`` fits a generic 3-D face (six points: nose tip, chin, outer eye
corners, mouth corners; the widely used model of Mallick, LearnOpenCV 2016, in mm-like
units) to the landmarks with a pinhole camera whose focal length is the image width and
whose centre is the image centre, then the rotation is read as Euler angles. A generic face
and a guessed camera give angles good to a few degrees near frontal, which is what a
frontal-pose check needs; they are not a calibrated measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MODEL_POINTS", "HeadPose", "head_pose"]

# (iBUG index, 3-D point): x to the face's left-to-right, y up, z towards the camera.
MODEL_POINTS: tuple[tuple[int, tuple[float, float, float]], ...] = (
    (30, (0.0, 0.0, 0.0)),  # nose tip
    (8, (0.0, -330.0, -65.0)),  # chin
    (36, (-225.0, 170.0, -135.0)),  # outer corner of the image-left eye
    (45, (225.0, 170.0, -135.0)),  # outer corner of the image-right eye
    (48, (-150.0, -150.0, -125.0)),  # image-left mouth corner
    (54, (150.0, -150.0, -125.0)),  # image-right mouth corner
)


@dataclass(frozen=True)
class HeadPose:
    yaw: float  # turning left/right, degrees (0 = facing the camera)
    pitch: float  # nodding up/down
    roll: float  # in-plane tilt

    def largest(self) -> float:
        return max(abs(self.yaw), abs(self.pitch), abs(self.roll))


def head_pose(landmarks: np.ndarray, image_size: tuple[int, int]) -> HeadPose:
    """The head pose of 68 landmarks (pixels) in an image of ``(height, width)``."""
    import cv2  # deferred: opencv is optional (the faces extra)

    pts = np.asarray(landmarks, dtype=np.float64)
    image_points = np.array([pts[i] for i, _ in MODEL_POINTS])
    # The model's y points up and the image's down: flip y so a frontal face has no rotation.
    model = np.array([p for _, p in MODEL_POINTS]) * np.array([1.0, -1.0, -1.0])
    h, w = image_size
    camera = np.array([[w, 0.0, w / 2], [0.0, w, h / 2], [0.0, 0.0, 1.0]])
    ok, rvec, _ = cv2.solvePnP(model, image_points, camera, np.zeros(4), flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        raise ValueError("head pose: solvePnP found no solution for these landmarks")
    rot, _ = cv2.Rodrigues(rvec)
    # R = Rz(roll) @ Ry(yaw) @ Rx(pitch)
    yaw = np.degrees(np.arcsin(np.clip(-rot[2, 0], -1.0, 1.0)))
    pitch = np.degrees(np.arctan2(rot[2, 1], rot[2, 2]))
    roll = np.degrees(np.arctan2(rot[1, 0], rot[0, 0]))
    return HeadPose(float(yaw), float(pitch), float(roll))
