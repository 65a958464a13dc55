"""The faces extra installs one OpenCV: insightface's opencv-python, never beside another cv2 wheel."""

from __future__ import annotations

from importlib import metadata

# Every PyPI distribution that installs the cv2 package: each writes the same cv2/ folder,
# so with two installed the last one wins file by file and uninstalling either breaks cv2.
CV2_WHEELS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_exactly_one_opencv_wheel_the_one_insightface_requires() -> None:
    requires = metadata.requires("insightface") or []
    assert any(r.split(";")[0].strip() == "opencv-python" for r in requires)
    installed = [name for name in CV2_WHEELS if _installed(name)]
    assert installed == ["opencv-python"], (
        f"cv2 wheels installed: {installed}; run `make setup` (it removes opencv-python-headless) "
        "or pip uninstall the extra ones and reinstall opencv-python"
    )
