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
- :func:`build_tiny_fineface` writes the FineFace layout as ``factory models pull`` lays it
  out in a models folder: ``stable-diffusion-2-1-base/`` (an SD-2-like pipeline: linear
  projections in the transformers) and ``fineface/`` with ``attn_processors.ckpt``,
  ``pytorch_lora_weights.safetensors`` and ``au_encoder.ckpt``, each written the way the
  release's training script writes it (state-dict keys from the UNet's own ``attn2`` names,
  the LoRA through peft + ``save_lora_weights``). ``faceid=True`` adds the FaceID variant:
  ``realistic-vision-v4/``, the ``sd15_*`` files, the IP-Adapter portrait file and a tiny
  ArcFace-shaped ONNX model.
- :func:`build_tiny_magicface` writes the MagicFace layout as ``factory models pull`` lays it
  out: ``stable-diffusion-v1-5/`` (an SD-1.5-like pipeline: convolutional projections) and
  ``magicface/ID_enc/`` + ``magicface/denoising_unet/`` (``config.json`` +
  ``diffusion_pytorch_model.safetensors``) as the release's classes save them: the release's
  ``_class_name`` s, 8 input channels and the AU projection under ``au_aug_mlp`` (a
  ``Linear(12 -> 128)``: the tiny UNet's time-embedding width, 1280 in the release).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

__all__ = [
    "TINY_AU_HIDDEN",
    "TINY_CROSS_DIM",
    "build_tiny_fineface",
    "build_tiny_magicface",
    "build_tiny_maugen",
    "build_tiny_sd",
    "export_tiny_arcface",
    "tiny_tokenizer",
]

TINY_CROSS_DIM = 32  # CLIP hidden size == UNet cross-attention dim == AU token width
TINY_AU_HIDDEN = 16  # FineFace AU-encoder features (64 in the release); 12 + 16 <= the token width
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


def _tiny_parts(
    in_channels: int, seed: int, work: Path, cross_dim: int = TINY_CROSS_DIM, linear_projection: bool = False
) -> dict[str, Any]:
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
        cross_attention_dim=cross_dim,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
        use_linear_projection=linear_projection,
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
            hidden_size=cross_dim,
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


def _attn2_names(unet: Any) -> list[str]:
    from diffusers.models.attention_processor import Attention

    return [name for name, m in unet.named_modules() if isinstance(m, Attention) and name.endswith("attn2")]


def au_processor_weights(unet: Any, scale: float) -> dict[str, Any]:
    """``attn_processors.ckpt`` as the release writes it: ``<attn2>.processor.au_to_{k,v}.weight``."""
    import torch

    state = {}
    for name in _attn2_names(unet):
        layer = unet.get_submodule(name)
        for part in ("au_to_k", "au_to_v"):
            shape = (layer.to_q.out_features, layer.to_k.in_features)
            state[f"{name}.processor.{part}.weight"] = torch.randn(shape) * scale
    return state


def au_encoder_state(hidden: int) -> dict[str, Any]:
    import torch

    holder = torch.nn.Module()
    holder.au_encoder = torch.nn.Linear(12, hidden)  # the release's AUEncoder keeps its Linear as `au_encoder`
    return holder.state_dict()


def save_lora(unet: Any, folder: Path, rank: int) -> None:
    """The release trainer's way: peft LoRA on to_q/to_k/to_v/to_out.0, saved by ``save_lora_weights``."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    config = LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    unet.add_adapter(config, adapter_name="unet")
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:  # gaussian init leaves B at zero: give the LoRA an effect to test
                p.copy_(torch.randn_like(p) * 0.05)
    layers = get_peft_model_state_dict(unet, adapter_name="unet")
    StableDiffusionPipeline.save_lora_weights(save_directory=str(folder), unet_lora_layers=layers)
    unet.delete_adapters("unet")


def export_tiny_arcface(path: Path) -> Path:
    """A random ONNX model with ArcFace's signature: (1, 3, 112, 112) -> (1, 512)."""
    import warnings

    import torch

    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 7, stride=8), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 512)
    ).eval()
    with warnings.catch_warnings():  # the TorchScript exporter (dynamo=False) warns it is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.zeros(1, 3, 112, 112),), str(path), input_names=["data"], output_names=["fc1"], dynamo=False
        )
    return path


def _faceid_files(unet: Any, folder: Path, cross_dim: int, tokens: int) -> None:
    """The sd15_* FineFace files, the IP-Adapter-FaceID portrait file and the ArcFace stand-in."""
    import torch

    fineface = folder / "fineface"
    torch.save(au_processor_weights(unet, 0.2), fineface / "sd15_attn_processors.ckpt")
    torch.save(au_encoder_state(cross_dim - 12), fineface / "sd15_au_encoder.ckpt")  # no padding, as in the release
    processors = list(unet.attn_processors)
    attn2 = set(_attn2_names(unet))
    ip_adapter = {}
    for i, key in enumerate(processors):
        name = key.removesuffix(".processor")
        if name in attn2:
            layer = unet.get_submodule(name)
            for part in ("to_k_ip", "to_v_ip"):
                ip_adapter[f"{i}.{part}.weight"] = torch.randn(layer.to_q.out_features, cross_dim) * 0.2
    proj = torch.nn.Module()
    proj.proj = torch.nn.Sequential(
        torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, cross_dim * tokens)
    )
    proj.norm = torch.nn.LayerNorm(cross_dim)
    (folder / "ip-adapter-faceid-portrait").mkdir(exist_ok=True)
    torch.save(
        {"image_proj": proj.state_dict(), "ip_adapter": ip_adapter},
        folder / "ip-adapter-faceid-portrait" / "ip-adapter-faceid-portrait-v11_sd15.bin",
    )
    export_tiny_arcface(folder / "w600k_r50.onnx")


def build_tiny_fineface(
    folder: Path,
    seed: int = 0,
    cross_dim: int = TINY_CROSS_DIM,
    au_hidden: int = TINY_AU_HIDDEN,
    lora_rank: int = 4,
    faceid: bool = False,
    faceid_tokens: int = 4,
) -> Path:
    """Save tiny FineFace files in a models-folder layout under ``folder``; returns ``folder``."""
    import torch
    from diffusers import StableDiffusionPipeline

    folder.mkdir(parents=True, exist_ok=True)
    parts = _tiny_parts(in_channels=4, seed=seed, work=folder / "_work", cross_dim=cross_dim, linear_projection=True)
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "stable-diffusion-2-1-base")
    if faceid:
        pipe.save_pretrained(folder / "realistic-vision-v4")  # an SD-1.5-like folder: same tiny shapes
    fineface = folder / "fineface"
    fineface.mkdir(exist_ok=True)
    torch.manual_seed(seed + 1)
    unet = parts["unet"]
    torch.save(au_processor_weights(unet, 0.2), fineface / "attn_processors.ckpt")
    torch.save(au_encoder_state(au_hidden), fineface / "au_encoder.ckpt")
    save_lora(unet, fineface, lora_rank)
    if faceid:
        _faceid_files(unet, folder, cross_dim, faceid_tokens)
    return folder


def _save_release_unet(unet: Any, folder: Path, class_name: str, rename: dict[str, str]) -> None:
    """A UNet saved as the release's subclass saves it: its class name, its own key names."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    config.update(_class_name=class_name, _diffusers_version="0.27.2", class_embed_type=None)
    config.update(projection_class_embeddings_input_dim=None)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {}
    for key, value in unet.state_dict().items():
        for old, new in rename.items():
            key = new + key[len(old) :] if key.startswith(old) else key
        state[key] = value.contiguous()
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))


def build_tiny_magicface(folder: Path, seed: int = 0) -> Path:
    """Save tiny MagicFace files in a models-folder layout under ``folder``; returns ``folder``."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    folder.mkdir(parents=True, exist_ok=True)
    parts = _tiny_parts(in_channels=4, seed=seed, work=folder / "_work")
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "stable-diffusion-v1-5")
    config = {k: v for k, v in dict(parts["unet"].config).items() if not k.startswith("_")}
    torch.manual_seed(seed + 1)
    id_enc = UNet2DConditionModel.from_config(config)
    _save_release_unet(id_enc, folder / "magicface" / "ID_enc", "UNetID2DConditionModel", {})
    torch.manual_seed(seed + 2)
    deno = UNet2DConditionModel.from_config(
        {
            **config,
            "in_channels": 8,
            "class_embed_type": "simple_projection",
            "projection_class_embeddings_input_dim": 12,
        }
    )
    with torch.no_grad():
        deno.class_embedding.weight.mul_(20.0)  # an AU effect visible in a 2-step tiny image
    _save_release_unet(
        deno, folder / "magicface" / "denoising_unet", "UNetDeno2DConditionModel", {"class_embedding.": "au_aug_mlp."}
    )
    return folder
