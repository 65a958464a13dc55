"""Tiny random-weight models, saved in the real on-disk layouts, for generator tests and benches.

Nothing is downloaded: the CLIP tokenizer is built from a vocabulary written here (every
lowercase letter, as a word piece and as a word end, plus a few whole words), and every
network is a diffusers/transformers model with a tiny config (``block_out_channels=(32,
64)``), seeded so repeated builds give the same weights.

- :func:`build_tiny_sd` writes a text-to-image pipeline folder (``save_pretrained``).
- :func:`build_tiny_maugen` writes the MAUGen release layout (see
  ``stages.generators.maugen.checkpoint.EXPECTED_LAYOUT``): a base SD-inpainting folder, the custom
  UNet state dict, the AU-cue tensor, the image-to-text-with-expression state dict and the
  112x112 identity-encoder state dict.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

__all__ = ["TINY_CROSS_DIM", "build_tiny_maugen", "build_tiny_sd", "tiny_tokenizer"]

TINY_CROSS_DIM = 32  # CLIP hidden size == UNet cross-attention dim == AU token width
_WORDS = ("a", "photo", "of", "face", "smiling", "person", "brow", "raised", "lips", "part", "jaw", "drop")


def tiny_tokenizer(folder: Path) -> Any:
    """A CLIPTokenizer over a hand-written vocabulary (no merges: words split to letters)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>", "!"]
    tokens += list(string.ascii_lowercase) + [c + "</w>" for c in string.ascii_lowercase]
    tokens += list(string.digits) + [d + "</w>" for d in string.digits] + [",</w>", ".</w>", ","]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges = ["#version: 0.2"]
    # A few merges so common words become single tokens, as with a real BPE vocabulary.
    for word in _WORDS:
        if len(word) < 2:
            continue
        piece = word[0]
        for ch in word[1:-1]:
            merges.append(f"{piece} {ch}")
            piece += ch
            vocab.setdefault(piece, len(vocab))
        merges.append(f"{piece} {word[-1]}</w>")
        vocab.setdefault(word + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("\n".join(dict.fromkeys(merges)) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _tiny_parts(in_channels: int, seed: int, work: Path) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_CROSS_DIM,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    tokenizer = tiny_tokenizer(work / "tokenizer_src")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TINY_CROSS_DIM,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def build_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """Save a tiny StableDiffusionPipeline to ``folder``; returns ``folder``."""
    from diffusers import StableDiffusionPipeline

    parts = _tiny_parts(in_channels=4, seed=seed, work=folder.parent / f"{folder.name}_work")
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def build_tiny_maugen(folder: Path, seed: int = 0) -> Path:
    """Save a tiny MAUGen checkpoint in the release layout to ``folder``; returns ``folder``."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    from stages.generators.maugen.checkpoint import DEFAULT_FILES
    from stages.generators.maugen.identity_encoder import IdentityEncoder, ImageToTextWithExpression
    from stages.generators.maugen.unet import MaugenUNet, MaugenUNetSpec

    folder.mkdir(parents=True, exist_ok=True)
    parts = _tiny_parts(in_channels=9, seed=seed, work=folder.parent / f"{folder.name}_work")
    base = StableDiffusionInpaintPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    base.save_pretrained(folder / DEFAULT_FILES.base)

    torch.manual_seed(seed + 1)
    spec = MaugenUNetSpec(
        num_labels=12,
        token_dim=TINY_CROSS_DIM,
        ff_dim=48,
        idm_dim=16,
        conv_dims=(32, 16),
        conv2_groups=16,
        num_heads=8,
        patch_size=2,
    )
    unet = MaugenUNet(parts["unet"], spec, id_dim=TINY_CROSS_DIM * 2)
    # Random heads would give flat labels; widen the output layers so probabilities spread.
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    torch.save(unet.state_dict(), folder / DEFAULT_FILES.unet)
    torch.save(torch.randn(1, 12, TINY_CROSS_DIM), folder / DEFAULT_FILES.au_cue)

    encoder = IdentityEncoder(embed_dim=64, depth=4, num_heads=2, patch_size=16, img_size=112, ext_depths=(1, 3))
    torch.save(encoder.state_dict(), folder / DEFAULT_FILES.identity_encoder)
    img2text = ImageToTextWithExpression(in_dim=128, hidden_dim=64, out_dim=TINY_CROSS_DIM, exp_dim=8)
    torch.save(img2text.state_dict(), folder / DEFAULT_FILES.img2text)
    return folder
