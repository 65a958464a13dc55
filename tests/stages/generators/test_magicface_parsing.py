"""BiSeNet face parsing for MagicFace's bg image: the full-size network with random weights,
saved in the layout of face-parsing.PyTorch's ``79999_iter.pth``, loaded strictly by our code.

Agreement with the release's own model code (zllrunning/face-parsing.PyTorch ``model.py`` +
``resnet.py``, as MagicFace's ``utils/`` copies them) was measured once, outside the repository
(it needs their code): the same random state dict (191 tensors, random BatchNorm statistics)
loaded into both with ``strict=True``, a (2, 3, 512, 512) normal input, CPU float32: main-head
logits max |ours - release| 1.1e-6 on values up to 1.4; argmax labels equal on all but 6 of
524,288 pixels (ties).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.base import StageError
from stages.generators.magicface.parsing import FACE_CLASSES, FaceParser, jaw_dots, parsing_bg, release_dot_colours
from stages.nets.bisenet import CELEBAMASK_CLASSES, BiSeNet


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bisenet") / "79999_iter.pth"
    torch.save(BiSeNet().state_dict(), path)
    return path


def test_state_dict_has_the_release_checkpoint_layout() -> None:
    """Keys and shapes of 79999_iter.pth as the release's model code defines them (no ``sp.*``)."""
    sd = BiSeNet().state_dict()
    assert len(sd) == 191 and not any(k.startswith("sp.") for k in sd)
    expected = {
        "cp.resnet.conv1.weight": (64, 3, 7, 7),
        "cp.resnet.layer4.0.downsample.0.weight": (512, 256, 1, 1),
        "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
        "cp.arm32.bn_atten.running_var": (128,),
        "cp.conv_avg.conv.weight": (128, 512, 1, 1),
        "ffm.convblk.conv.weight": (256, 256, 1, 1),
        "ffm.conv1.weight": (64, 256, 1, 1),
        "conv_out.conv_out.weight": (19, 256, 1, 1),
        "conv_out16.conv.conv.weight": (64, 128, 3, 3),
        "conv_out32.conv_out.weight": (19, 64, 1, 1),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert len(CELEBAMASK_CLASSES) == 19 and CELEBAMASK_CLASSES[17] == "hair"


def test_parser_loads_strictly_and_labels_at_the_crop_size(weights: Path) -> None:
    parser = FaceParser(weights, parse_size=64)
    crop = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    labels = parser.parse(crop)
    assert labels.shape == (48, 48) and labels.dtype == np.uint8 and labels.max() < 19
    assert np.array_equal(labels, parser.parse(crop))
    sd = torch.load(weights, weights_only=True)
    assert torch.equal(parser.net.state_dict()["conv_out.conv_out.weight"], sd["conv_out.conv_out.weight"])


@pytest.mark.parametrize(
    ("state", "why"),
    [  # small files: the keys are checked before any weight is loaded
        ({"cp.resnet.conv1.weight": torch.zeros(64, 3, 7, 7)}, "190 missing keys"),
        ({"sp.conv1.conv.weight": torch.zeros(64, 3, 7, 7)}, "unexpected keys (first: sp.conv1.conv.weight)"),
        ({"conv_out.conv_out.weight": torch.zeros(20, 256, 1, 1)}, "mis-shaped"),
        ([1, 2], "not a state dict"),
    ],
)
def test_mismatched_file_names_it_and_the_pull(tmp_path: Path, state: object, why: str) -> None:
    broken = tmp_path / "79999_iter.pth"
    torch.save(state, broken)
    with pytest.raises(StageError, match=re.escape(why)) as err:
        FaceParser(broken)
    assert str(broken) in str(err.value) and "factory models pull bisenet-face-parsing" in str(err.value)


def test_missing_or_unreadable_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="is missing") as err:
        FaceParser(tmp_path / "79999_iter.pth")
    assert "factory models pull bisenet-face-parsing" in str(err.value)
    (tmp_path / "79999_iter.pth").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(StageError, match="cannot be read"):
        FaceParser(tmp_path / "79999_iter.pth")


def test_bg_paints_face_classes_black_keeps_the_rest_and_adds_jaw_dots() -> None:
    crop = np.full((64, 64, 3), 100, np.uint8)
    labels = np.zeros((64, 64), np.uint8)  # background
    labels[16:48, 16:48] = 1  # skin
    labels[0:8, :] = 17  # hair
    labels[20:24, 20:30] = 10  # nose
    labels[56:, :] = 14  # neck
    jaw = np.array([[16.0 + 2 * i, 47.0] for i in range(17)])
    jaw[16] = (60.0, 60.0)  # the last dot on the kept neck
    bg = parsing_bg(crop, labels, jaw)
    assert bg[30, 40].tolist() == [0, 0, 0]  # skin, away from the dots
    assert bg[22, 25].tolist() == [0, 0, 0]  # nose
    assert bg[4, 4].tolist() == [100, 100, 100]  # hair kept
    assert bg[58, 2].tolist() == [100, 100, 100]  # neck kept
    # The first jaw dot on black skin is its colour: rainbow(0) = (127, 0, 255) with red and blue swapped.
    assert bg[47, 16].tolist() == [255, 0, 127] == list(release_dot_colours()[0])
    # On a kept pixel the dot is added to the photo, saturating as the release's save_image(bg + dots).
    last = np.array(release_dot_colours()[16])
    assert bg[60, 60].tolist() == np.clip(100 + last, 0, 255).tolist()
    assert set(FACE_CLASSES) == {1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 15}


def test_jaw_dots_radius_scales_with_the_crop() -> None:
    small = jaw_dots(256, np.array([[128.0, 128.0]] * 17))
    large = jaw_dots(512, np.array([[256.0, 256.0]] * 17))
    lit_small, lit_large = (small.sum(-1) > 0).sum(), (large.sum(-1) > 0).sum()
    assert 9 <= lit_small <= 25 and 2.5 <= lit_large / lit_small <= 5.0  # area grows ~4x with radius 2x
