"""MAUGen: tiny random-weight models in the release's checkpoint layout, loaded the real way."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.tiny_models import build_tiny_maugen
from manifests.bank import open_bank
from stages.base import StageContext, StageError
from stages.generators.maugen.checkpoint import DEFAULT_FILES
from stages.generators.maugen.label_decoder import IdentityDecouplingModule, patchify
from stages.generators.maugen.pipeline import au_intensity
from stages.generators.maugen.stage import MaugenConfig, MaugenGenerator, default_mask

SIZE = 64
IDS = ("builtin-astronaut", "builtin-grace-hopper")
ALL_FILES = (
    DEFAULT_FILES.base,
    DEFAULT_FILES.unet,
    DEFAULT_FILES.au_cue,
    DEFAULT_FILES.img2text,
    DEFAULT_FILES.identity_encoder,
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_maugen(tmp_path_factory.mktemp("tiny_maugen") / "release")


@pytest.fixture(scope="module")
def bank() -> Any:
    return open_bank("builtin")


def _generator(ckpt: Path, bank: Any, **options: Any) -> MaugenGenerator:
    gen = MaugenGenerator(
        MaugenConfig(checkpoint_dir=str(ckpt), steps=2, **options),
        StageContext(run_dir=Path("."), image_size=SIZE, identity_bank=bank),
    )
    gen.setup()
    return gen


@pytest.fixture(scope="module")
def generator(ckpt: Path, bank: Any) -> MaugenGenerator:
    return _generator(ckpt, bank)


def _records(n: int, seed0: int = 7) -> list[dict[str, Any]]:
    return [
        {
            "description": f"a person smiling, lips part {i}",
            "seed": seed0 + i,
            "identity_id": IDS[i % 2],
            "planned_intensity": [0] * 6 + [3] + [0] * 5,
        }
        for i in range(n)
    ]


def test_images_and_decoded_labels(generator: MaugenGenerator) -> None:
    batch = generator.process(_records(2))
    for record in batch:
        assert record["image"].shape == (SIZE, SIZE, 3) and record["image"].dtype == np.uint8
        assert record["generator"] == "maugen" and record["label_source"] == "decoded"
        occ, inten = record["generator_occurrence"], record["generator_intensity"]
        assert len(occ) == 12 and len(inten) == 12
        assert all(0.0 <= p <= 1.0 for p in occ)
        assert all(x in {0.0, 1.0, 2.0, 3.0, 4.0, 5.0} for x in inten)
    # Labels are decoded from the sample, not copied from the plan.
    assert batch[0]["generator_occurrence"] != batch[1]["generator_occurrence"]


def test_same_seed_same_sample_other_seed_other_image(generator: MaugenGenerator) -> None:
    first = generator.process(_records(1))[0]
    again = generator.process(_records(1))[0]
    other = generator.process(_records(1, seed0=999))[0]
    assert np.array_equal(first["image"], again["image"])
    assert first["generator_occurrence"] == again["generator_occurrence"]
    assert np.abs(first["image"].astype(int) - other["image"].astype(int)).mean() > 1.0


def test_sample_does_not_depend_on_its_batch(generator: MaugenGenerator) -> None:
    batch = generator.process(_records(8))
    alone = generator.process([_records(8)[5]])[0]
    assert np.abs(alone["image"].astype(int) - batch[5]["image"].astype(int)).max() <= 3
    assert np.allclose(alone["generator_occurrence"], batch[5]["generator_occurrence"], atol=1e-4)
    timing = generator.last_timing
    assert timing["batch_size"] == 1 and 0.0 < timing["model_s"] <= timing["total_s"]


def test_identity_conditions_image_and_labels(generator: MaugenGenerator) -> None:
    a, b = _records(1), _records(1)
    b[0]["identity_id"] = IDS[1]
    a[0]["identity_id"] = IDS[0]
    ra, rb = generator.process(a)[0], generator.process(b)[0]
    assert np.abs(ra["image"].astype(int) - rb["image"].astype(int)).mean() > 0.5
    assert not np.allclose(ra["generator_occurrence"], rb["generator_occurrence"])


def test_au_cue_refresh_changes_labels(ckpt: Path, bank: Any, generator: MaugenGenerator) -> None:
    ema = _generator(ckpt, bank, au_cue_mode="ema").process(_records(1))[0]
    fixed = generator.process(_records(1))[0]
    assert not np.allclose(fixed["generator_occurrence"], ema["generator_occurrence"])


def test_paper_idm_mode_runs_and_differs(ckpt: Path, bank: Any, generator: MaugenGenerator) -> None:
    paper = _generator(ckpt, bank, idm_mode="paper").process(_records(1))[0]
    release = generator.process(_records(1))[0]
    assert all(0.0 <= p <= 1.0 for p in paper["generator_occurrence"])
    assert not np.allclose(paper["generator_occurrence"], release["generator_occurrence"])


def test_record_mask_keeps_background(generator: MaugenGenerator) -> None:
    record = _records(1)[0]
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 16:48] = 255
    record["mask"] = mask
    record["background"] = np.full((SIZE, SIZE, 3), 200, np.uint8)
    out = generator.process([record])[0]
    assert out["image"].shape == (SIZE, SIZE, 3)
    plain = generator.process(_records(1))[0]
    assert np.abs(out["image"].astype(int) - plain["image"].astype(int)).mean() > 0.5


def test_face_ellipse_mask_shape() -> None:
    mask = default_mask("face-ellipse", 64)
    assert mask[28, 32] == 1.0 and mask[0, 0] == 0.0 and 0.2 < mask.mean() < 0.6
    assert default_mask("full", 8).min() == 1.0


def test_identity_without_face_is_dropped(ckpt: Path, tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(tmp_path / "n.png")
    (tmp_path / "identities.csv").write_text(
        "identity_id,image,ethnicity,age_band,gender,source,licence\nnoise,n.png,white,adult,female,test noise,cc0\n"
    )
    gen = _generator(ckpt, open_bank(str(tmp_path)))
    record = {**_records(1)[0], "identity_id": "noise"}
    out = gen.process([record])[0]
    assert out["dropped_by"] == "maugen" and "no face" in out["drop_reason"]
    assert "image" not in out


def test_no_identity_bank_is_a_stage_error(ckpt: Path) -> None:
    gen = MaugenGenerator(MaugenConfig(checkpoint_dir=str(ckpt)), StageContext(run_dir=Path("."), image_size=SIZE))
    with pytest.raises(StageError, match=r"identities\.bank"):
        gen.setup()


@pytest.mark.parametrize("name", ALL_FILES)
def test_missing_file_names_it_and_lists_layout(ckpt: Path, bank: Any, tmp_path: Path, name: str) -> None:
    broken = tmp_path / "ckpt"
    shutil.copytree(ckpt, broken)
    target = broken / name
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(StageError) as err:
        _generator(broken, bank)
    message = str(err.value)
    assert str(target) in message
    for expected in ALL_FILES:
        assert expected in message


def _corrupt(ckpt: Path, tmp_path: Path, name: str, edit: Any) -> Path:
    broken = tmp_path / "ckpt"
    shutil.copytree(ckpt, broken)
    obj = torch.load(broken / name, weights_only=True)
    torch.save(edit(obj), broken / name)
    return broken


@pytest.mark.parametrize(
    ("name", "edit", "why"),
    [
        (
            DEFAULT_FILES.unet,
            lambda sd: {k: v for k, v in sd.items() if "au_transformer.0.attention_layers_text" not in k},
            "missing",
        ),
        (DEFAULT_FILES.unet, lambda sd: {**sd, "unet.conv_in.weight": torch.zeros(32, 4, 3, 3)}, "mis-shaped"),
        (DEFAULT_FILES.identity_encoder, lambda sd: {**sd, "extra.weight": torch.zeros(1)}, "unexpected"),
        (DEFAULT_FILES.au_cue, lambda cue: cue[:, :11], "AU cue"),
        (DEFAULT_FILES.img2text, lambda sd: [1, 2, 3], "not a state dict"),
    ],
)
def test_mismatched_file_names_it(ckpt: Path, bank: Any, tmp_path: Path, name: str, edit: Any, why: str) -> None:
    broken = _corrupt(ckpt, tmp_path, name, edit)
    with pytest.raises(StageError) as err:
        _generator(broken, bank)
    message = str(err.value)
    assert str(broken / name) in message and why in message
    assert "expected MAUGen checkpoint layout" in message


def test_unreadable_file_names_it(ckpt: Path, bank: Any, tmp_path: Path) -> None:
    broken = tmp_path / "ckpt"
    shutil.copytree(ckpt, broken)
    (broken / DEFAULT_FILES.unet).write_bytes(b"\x00garbage")
    with pytest.raises(StageError, match="cannot be read") as err:
        _generator(broken, bank)
    assert str(broken / DEFAULT_FILES.unet) in str(err.value)


def test_release_sized_model_has_release_state_dict_layout() -> None:
    """Keys and shapes the release's SD-1.5 checkpoint holds (from its model code), on the meta device."""
    from diffusers import UNet2DConditionModel

    from stages.generators.maugen.identity_encoder import IdentityEncoder, ImageToTextWithExpression
    from stages.generators.maugen.unet import MaugenUNet, MaugenUNetSpec

    with torch.device("meta"):
        base = UNet2DConditionModel(in_channels=9, cross_attention_dim=768, attention_head_dim=8)
        unet = MaugenUNet(base, MaugenUNetSpec(), id_dim=2 * 768)
        encoder = IdentityEncoder()
        img2text = ImageToTextWithExpression()
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    expected = {
        "unet.conv_in.weight": (320, 9, 3, 3),
        "auxiliary_head.0.time_emb_proj.weight": (1280, 1280),
        "auxiliary_head.0.idm.mlp.weight": (128, 1536),
        "auxiliary_head.0.idm.linear_projection.weight": (1280, 1536),
        "auxiliary_head.1.idm.W_O.weight": (640, 128),
        "auxiliary_head.2.depthwise_conv1.weight": (320, 1, 3, 3),
        "auxiliary_head.2.pointwise_conv1.weight": (512, 320, 1, 1),
        "auxiliary_head.0.depthwise_conv2.weight": (512, 2, 3, 3),
        "auxiliary_head.0.patch_embedding.weight": (768, 4096),
        "au_transformer.2.attention_layers_text.0.in_proj_weight": (2304, 768),
        "au_transformer.1.feedforward_layers_dec.0.2.weight": (768, 512),
        "au_transformer.0.norm_layers_dec_3.0.weight": (768,),
        "dual_prediction_head.token_fc_layers_det.11.0.weight": (384, 768),
        "dual_prediction_head.token_fc_layers_reg.0.2.weight": (1, 384),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    assert "auxiliary_head.3.idm.mlp.weight" not in shapes  # three cross-attention up blocks
    enc = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert enc["pos_embed"] == (1, 197, 384) and enc["blocks.11.attn.qkv.weight"] == (1152, 384)
    assert enc["norms.layer_2.0.running_mean"] == (384,) and "norms.layer_11.1.weight" in enc
    i2t = {k: tuple(v.shape) for k, v in img2text.state_dict().items()}
    assert i2t["i2t_first.layers.0.0.weight"] == (1536, 1600) and i2t["i2t_last.fc_out.weight"] == (768, 1536)
    assert i2t["null_exp"] == (64,)


def test_patchify_matches_unfold_order() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    ref = x.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(2, 4, 3 * 16)
    assert torch.equal(patchify(x, 4), ref)


def test_idm_paper_equations() -> None:
    torch.manual_seed(0)
    paper = IdentityDecouplingModule(channels=16, id_dim=12, hidden=8, mode="paper")
    release = IdentityDecouplingModule(channels=16, id_dim=12, hidden=8, mode="release")
    release.load_state_dict(paper.state_dict())
    z, c_id = torch.randn(2, 16, 4, 4), torch.randn(2, 12)
    keys = paper.W_K(torch.nn.functional.layer_norm(z.flatten(2).transpose(1, 2), (16,)))
    # Eq. 6: the paper's gate is the complement of the similarity the release uses.
    assert torch.allclose(paper.modulation_mask(c_id, keys) + release.modulation_mask(c_id, keys), torch.ones(2, 1, 16))
    # Eq. 7 + 8 with the attention branch switched off: LN(z - <z, c>c), orthogonal to c.
    with torch.no_grad():
        paper.W_O.weight.zero_()
        paper.W_O.bias.zero_()
    out = paper(z, c_id).flatten(2).transpose(1, 2)
    direction = torch.nn.functional.normalize(paper.linear_projection(c_id), dim=-1).unsqueeze(1)
    tokens = z.flatten(2).transpose(1, 2)
    filtered = tokens - (tokens * direction).sum(-1, keepdim=True) * direction
    assert torch.allclose(out, torch.nn.functional.layer_norm(filtered, (16,)), atol=1e-5)
    assert (filtered * direction).sum(-1).abs().max() < 1e-4
    # Per-sample: the first sample's output does not change when the second one does.
    z2 = z.clone()
    z2[1] += 5
    assert torch.allclose(paper(z, c_id)[0], paper(z2, c_id)[0], atol=1e-6)
    assert torch.allclose(release(z, c_id)[0], release(z2, c_id)[0], atol=1e-6)


def test_intensity_rounding() -> None:
    got = au_intensity(torch.tensor([0.0, 0.05, 0.15, 0.42, 0.98, 1.3]))
    assert got.tolist() == [0.0, 0.0, 1.0, 2.0, 5.0, 5.0]
    assert math.isclose(float(au_intensity(torch.tensor(0.61))), 3.0)


def test_image_size_must_fit_the_unet(ckpt: Path, bank: Any) -> None:
    gen = MaugenGenerator(
        MaugenConfig(checkpoint_dir=str(ckpt)), StageContext(run_dir=Path("."), image_size=62, identity_bank=bank)
    )
    with pytest.raises(StageError, match=r"image_size=62.*multiple of 4"):
        gen.setup()


def test_state_dict_saved_from_ddp_wrapper_loads(ckpt: Path, bank: Any, tmp_path: Path) -> None:
    wrapped = _corrupt(ckpt, tmp_path, DEFAULT_FILES.unet, lambda sd: {f"module.{k}": v for k, v in sd.items()})
    gen = _generator(wrapped, bank)
    reference = _generator(ckpt, bank)
    for (name, a), (_, b) in zip(
        gen.pipe.unet.state_dict().items(), reference.pipe.unet.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
