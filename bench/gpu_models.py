"""Random-weight models of the per-GPU chain at full or tiny size, saved in the layouts the stages load.

Speed does not depend on weight values, so a model built from its published configuration
with random weights costs what the released one costs. ``full`` uses the published
configurations, written out below: Stable Diffusion 2.1-base's UNet, VAE and text encoder
(OpenCLIP ViT-H/14's text tower, 23 layers, 1024 wide), FineFace's AU encoder (12 -> 64) and
AU attention processors on every ``attn2``, a rank-32 LoRA (the release's training scale
8/32), OpenGraphAU's ResNet-50 and LibreFace's ResNet-18 encoder + DISFA-12 head as ONNX
graphs. ``tiny`` shrinks the diffusion models (``bench.tiny_models``' sizes) and LibreFace's
encoder and uses a ResNet-18 OpenGraphAU, so the same harness runs in the test suite on CPU.

SCRFD cannot be exported from this code: insightface ships det_10g only as an ONNX file,
without the network's source. :func:`export_centred_scrfd` writes a stand-in with SCRFD's
input and its 9 outputs (decoded by insightface's own ``SCRFD`` class, as det_10g is) and a
convolutional backbone of about det_10g's compute at 640 px (full size); it "finds" one
face in the middle of any image, so every sample goes on to the detectors as a real face would.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "SD21_BASE",
    "ModelFolders",
    "Size",
    "build_models",
    "export_centred_scrfd",
    "folders_at",
    "models_at",
    "sd21_parts",
]

Size = Literal["full", "tiny"]

# stabilityai/stable-diffusion-2-1-base: unet/, vae/ and text_encoder/ config.json (the fields that shape compute).
SD21_BASE: dict[str, dict[str, Any]] = {
    "unet": {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "attention_head_dim": (5, 10, 20, 20),
        "cross_attention_dim": 1024,
        "use_linear_projection": True,
        "norm_num_groups": 32,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 768,
    },
    "text_encoder": {
        "vocab_size": 49408,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 512,
    },
}

_TINY: dict[str, dict[str, Any]] = {
    "unet": {
        **SD21_BASE["unet"],
        "sample_size": 8,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "attention_head_dim": (2, 4),
        "cross_attention_dim": 32,
        "norm_num_groups": 8,
    },
    "vae": {
        **SD21_BASE["vae"],
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "block_out_channels": (16, 32),
        "norm_num_groups": 8,
        "sample_size": 64,
    },
    "text_encoder": {
        **SD21_BASE["text_encoder"],
        "vocab_size": 200,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "projection_dim": 32,
    },
}
AU_HIDDEN = {"full": 64, "tiny": 16}  # the release's AU encoder is Linear(12 -> 64), zero-padded to the token
LORA_RANK = {"full": 32, "tiny": 4}


@dataclass(frozen=True)
class ModelFolders:
    """Where :func:`build_models` put each model (the recipe keys that point at them)."""

    root: Path
    size: Size
    sd_base: Path  # stable-diffusion-2-1-base/ (the plain text-to-image pipeline too)
    fineface: Path  # fineface/ (AU processors, AU encoder, LoRA)
    scrfd: Path
    opengraphau: Path
    opengraphau_backbone: str
    libreface_spec: Path

    def generator(self, name: str) -> dict[str, Any]:
        """The recipe's ``[generator]`` keys that load this generator from these folders."""
        if name == "fineface":
            return {"name": "fineface", "base_dir": str(self.sd_base), "weights_dir": str(self.fineface)}
        return {"name": "diffusers", "pipeline": str(self.sd_base)}


def sd21_parts(size: Size, work: Path, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """SD 2.1-base's parts with random weights (built on ``device``), float32."""
    import torch  # deferred: optional and heavy (the gen extra)
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel  # deferred: as torch
    from transformers import CLIPTextConfig, CLIPTextModel  # deferred: as torch

    from bench.tiny_models import tiny_tokenizer  # deferred: imports transformers

    configs = SD21_BASE if size == "full" else _TINY
    torch.manual_seed(seed)
    with torch.device(device):  # initialising 1.3 B parameters on the GPU takes seconds, not minutes
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        tokenizer = tiny_tokenizer(work / "tokenizer")  # a real vocabulary needs a download; cost is the same
        text = CLIPTextModel(
            CLIPTextConfig(
                **configs["text_encoder"],
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    # stable-diffusion-2-1-base/scheduler/scheduler_config.json
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    return {"unet": unet, "vae": vae, "text_encoder": text, "tokenizer": tokenizer, "scheduler": scheduler}


def _save_fineface(parts: dict[str, Any], folder: Path, size: Size) -> None:
    import torch  # deferred: optional and heavy

    from bench.tiny_models import au_encoder_state, au_processor_weights, save_lora  # deferred: diffusers

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    unet = parts["unet"]
    torch.save({k: v.cpu() for k, v in au_processor_weights(unet, 0.02).items()}, folder / "attn_processors.ckpt")
    torch.save(au_encoder_state(AU_HIDDEN[size]), folder / "au_encoder.ckpt")
    save_lora(unet, folder, LORA_RANK[size])


def _save_opengraphau(path: Path, backbone: str) -> None:
    import torch  # deferred: optional and heavy

    from stages.detectors.opengraphau.model import build_mefarg  # deferred: imports torch

    torch.manual_seed(2)
    net = build_mefarg(backbone)
    torch.save({"state_dict": net.state_dict()}, path)


def _export(model: Any, example: Any, path: Path, inputs: list[str], outputs: list[str]) -> None:
    import torch  # deferred: optional and heavy

    with warnings.catch_warnings():  # the TorchScript exporter (dynamo=False) warns it is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model.eval(), (example,), str(path), input_names=inputs, output_names=outputs, dynamo=False)


def _save_libreface(folder: Path, size: Size) -> Path:
    """LibreFace's two ONNX graphs (encoder 224 px -> 512: ResNet-18 at full size, one strided
    convolution at tiny size; head 512 -> 12) and their spec."""
    import torch  # deferred: optional and heavy

    from stages.nets.resnet import build_resnet  # deferred: imports torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(3)
    encoder = (
        build_resnet("resnet18", num_classes=None)
        if size == "full"
        else torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 7, stride=8),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, 512),
        )
    )
    _export(encoder, torch.zeros(1, 3, 224, 224), folder / "enc.onnx", ["image"], ["feature"])
    _export(torch.nn.Linear(512, 12), torch.zeros(1, 512), folder / "head.onnx", ["feature"], ["au_intensity"])
    spec = (Path(__file__).resolve().parents[1] / "recipes" / "detectors" / "libreface.yaml").read_text()
    spec = spec.replace("catalogue:libreface-au-encoder", "enc.onnx").replace(
        "catalogue:libreface-au-intensity", "head.onnx"
    )
    (folder / "libreface.yaml").write_text(spec)
    return folder / "libreface.yaml"


class _CentredSCRFD:
    """Builds the stand-in module lazily (torch is optional)."""

    @staticmethod
    def module(side: int, width: int) -> Any:
        import torch  # deferred: optional and heavy

        strides = (8, 16, 32)
        unit = side / 32.0  # one stride-32 cell; the face box spans about half the image
        boxes = torch.tensor([0.25 * side / 32.0] * 2 + [0.25 * side / 32.0] * 2)
        points = torch.tensor([[-0.1, -0.08], [0.1, -0.08], [0.0, 0.02], [-0.08, 0.12], [0.08, 0.12]]) * side / 32.0
        cells = int(unit)
        logits = {s: torch.full(((side // s) ** 2 * 2, 1), -20.0) for s in strides}
        logits[32][((cells // 2) * cells + cells // 2) * 2] = 20.0  # anchor 0 of the centre cell
        layers: list[Any] = []
        channels = 3
        for i in range(4 if width else 0):  # stride 2 each: ~10 GFLOPs at 640 px and width 32, as det_10g
            layers += [torch.nn.Conv2d(channels, width * 2**i, 3, 2, 1), torch.nn.ReLU()]
            layers += [torch.nn.Conv2d(width * 2**i, width * 2**i, 3, 1, 1), torch.nn.ReLU()]
            channels = width * 2**i

        class Centred(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.backbone = torch.nn.Sequential(*layers)
                for s in strides:
                    self.register_buffer(f"logit_{s}", logits[s])
                self.register_buffer("box", boxes)
                self.register_buffer("kps", points.reshape(-1))

            def forward(self, x: Any) -> tuple[Any, ...]:
                zero = self.backbone(x).mean() * 0.0 if layers else x.mean() * 0.0  # the compute, no effect
                scores = [torch.sigmoid(getattr(self, f"logit_{s}") + zero) for s in strides]
                return (*scores, *[s * 0.0 + self.box for s in scores], *[s * 0.0 + self.kps for s in scores])

        return Centred()


def export_centred_scrfd(path: Path, side: int, width: int) -> Path:
    """An SCRFD-layout ONNX graph (input ``side`` px) that finds one face in the image's middle."""
    import torch  # deferred: optional and heavy

    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)]
    _export(_CentredSCRFD.module(side, width), torch.zeros(1, 3, side, side), path, ["input.1"], names)
    return path


SCRFD_SIDE = {"full": 640, "tiny": 128}


def build_models(root: Path, size: Size, device: str = "cpu") -> ModelFolders:
    """Build and save every model of the chain under ``root``; ``device`` only speeds up initialising."""
    import torch  # deferred: optional and heavy
    from diffusers import StableDiffusionPipeline  # deferred: as torch

    root.mkdir(parents=True, exist_ok=True)
    parts = sd21_parts(size, root / "_work", device=device)
    # float16 files: half the disk and load time; each stage casts to its own dtype when it loads.
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if size == "full":
        pipe = pipe.to(torch.float16)
    pipe.save_pretrained(root / "stable-diffusion-2-1-base")
    parts["unet"] = parts["unet"].float()  # the LoRA is made in float32, as the trainer made it
    _save_fineface(parts, root / "fineface", size)
    _save_opengraphau(root / "opengraphau.pth", folders_at(root, size).opengraphau_backbone)
    export_centred_scrfd(root / "scrfd.onnx", SCRFD_SIDE[size], 32 if size == "full" else 0)
    _save_libreface(root / "libreface", size)
    (root / "models.json").write_text(json.dumps({"size": size, "seed": 0}))  # written last: the build is whole
    return folders_at(root, size)


def folders_at(root: Path, size: Size) -> ModelFolders:
    """The folders :func:`build_models` writes under ``root``."""
    return ModelFolders(
        root, size, root / "stable-diffusion-2-1-base", root / "fineface", root / "scrfd.onnx",
        root / "opengraphau.pth", "resnet50" if size == "full" else "resnet18", root / "libreface" / "libreface.yaml",
    )  # fmt: skip


def models_at(root: Path, size: Size, device: str = "cpu") -> ModelFolders:
    """The models under ``root``, built there first unless a whole build of ``size`` is there
    (the device script builds them once for the smoke test and the bench)."""
    marker = root / "models.json"
    if marker.is_file() and json.loads(marker.read_text()).get("size") == size:
        return folders_at(root, size)
    return build_models(root, size, device)
