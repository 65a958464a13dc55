"""OpenGraphAU network: the official key layout, output shape and the checkpoint reader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stages.detectors.base import VOCABULARIES
from stages.detectors.opengraphau.model import (
    ARCHS,
    VOCABULARY,
    CheckpointError,
    _Arch,
    build_mefarg,
    load_mefarg,
    read_state_dict,
)
from stages.nets.resnet import ResNetSpec


def test_vocabulary_is_the_release_order() -> None:
    assert VOCABULARIES["opengraphau41"] == VOCABULARY
    assert len(VOCABULARY) == 41


def test_resnet50_layout_matches_release() -> None:
    sd = build_mefarg("resnet50").state_dict()
    # torchvision resnet50 without fc: 320 - 2 entries, then OpenGraphAU's own modules.
    backbone = [k for k in sd if k.startswith("backbone.")]
    assert len(backbone) == 318
    assert not any(k.startswith("backbone.fc") for k in sd)
    assert sd["backbone.layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert sd["global_linear.fc.weight"].shape == (512, 2048)
    assert sd["head.main_class_linears.26.bn.running_var"].shape == (512,)
    assert sd["head.gnn.bnv.weight"].shape == (27,)
    assert sd["head.main_sc"].shape == (27, 512)
    assert sd["head.sub_sc"].shape == (14, 512)


def test_swin_base_layout_matches_release() -> None:
    sd = build_mefarg("swin_base").state_dict()
    assert sd["backbone.patch_embed.proj.weight"].shape == (128, 3, 4, 4)
    assert sd["backbone.layers.2.blocks.17.attn.relative_position_bias_table"].shape == (169, 16)
    assert "backbone.layers.2.blocks.17.attn_mask" in sd  # shifted block at 14x14
    assert "backbone.layers.3.blocks.1.attn_mask" not in sd  # 7x7: never shifted
    assert sd["backbone.layers.2.downsample.reduction.weight"].shape == (1024, 2048)
    assert sd["global_linear.fc.weight"].shape == (512, 1024)
    assert not any(k.startswith("backbone.head") for k in sd)


@pytest.fixture()
def tiny_arch(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(ARCHS, "tiny_resnet", _Arch("resnet", ResNetSpec("bottleneck", (1, 1, 1, 1), 8)))
    return "tiny_resnet"


def test_release_checkpoint_form_round_trips(tmp_path: Path, tiny_arch: str) -> None:
    torch.manual_seed(0)
    net = build_mefarg(tiny_arch).eval()
    # The release saves {"epoch", "state_dict", "optimizer"} with DataParallel's "module." prefix.
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    assert set(read_state_dict(path)) == set(net.state_dict())
    loaded = load_mefarg(path, tiny_arch)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = net(x), loaded(x)
    assert got.shape == (2, 41)
    torch.testing.assert_close(got, expected)
    assert float(got.abs().max()) <= 1.0 + 1e-5  # cosine similarities


def test_mismatched_checkpoint_names_file_and_keys(tmp_path: Path, tiny_arch: str) -> None:
    state = build_mefarg(tiny_arch).state_dict()
    del state["head.main_sc"]
    state["backbone.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError) as err:
        load_mefarg(path, tiny_arch)
    msg = str(err.value)
    assert str(path) in msg
    assert "head.main_sc" in msg and "backbone.extra.weight" in msg


def test_unreadable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_state_dict(path)


def test_stage2_layout_matches_release() -> None:
    sd = build_mefarg("resnet50", stage=2).state_dict()
    assert sd["head.edge_extractor.FAM.linear_q.weight"].shape == (256, 512)
    assert sd["head.edge_extractor.ARM.linear_v.weight"].shape == (512, 512)
    assert sd["head.edge_extractor.bn.running_mean"].shape == (27 * 27,)
    assert sd["head.gnn.graph_layers.1.bne.weight"].shape == (27 * 27,)
    assert "head.gnn.graph_layers.0.E.bias" not in sd  # bias-free linears in the release
    assert not any(k.startswith("head.gnn.U") or k.endswith(".start") for k in sd)


def test_edge_matrices_follow_release_convention() -> None:
    from stages.detectors.opengraphau.model import _edge_matrices

    start, end = _edge_matrices(3)
    for i in range(3):
        for j in range(3):
            assert start[i * 3 + j].argmax() == j and end[i * 3 + j].argmax() == i
    assert start.sum() == end.sum() == 9


def test_stage2_round_trip_and_stage_mismatch(tmp_path: Path, tiny_arch: str) -> None:
    torch.manual_seed(0)
    net = build_mefarg(tiny_arch, stage=2).eval()
    torch.save({"state_dict": net.state_dict()}, tmp_path / "s2.pth")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(load_mefarg(tmp_path / "s2.pth", tiny_arch, stage=2)(x), net(x))
    torch.save({"state_dict": build_mefarg(tiny_arch).state_dict()}, tmp_path / "s1.pth")
    with pytest.raises(CheckpointError, match="stage 2"):
        load_mefarg(tmp_path / "s1.pth", tiny_arch, stage=2)
