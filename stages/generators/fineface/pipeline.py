"""The loaded FineFace model and one batched, seeded call of it.

Loading, as the release does it but from local folders: the base diffusers folder
(``StableDiffusionPipeline.from_pretrained(..., local_files_only=True)``), the AU processors on
every ``attn2`` (:mod:`.attention`) with their weights checked key by key against
``attn_processors.ckpt``, the LoRA through diffusers' own loader (``load_lora_adapter``, needs
``peft``; no alpha is stored, so the scale is 1, as the release's loader reads it), then the
AU encoder; the FaceID variant adds the IP-Adapter weights and projection instead of a LoRA.

**The LoRA scale.** The trainer (``train.py``) builds its peft ``LoraConfig`` without
``lora_alpha``, so the LoRA trained at peft's default alpha 8 over its rank (8/32 = 0.25 for
the release). The file stores no alpha; the release's inference pipeline calls
``unet.load_attn_procs`` on it, which under its own pins (diffusers 0.27.2 with peft) returns
without loading anything: the published pipeline runs *without* the LoRA (measured: zero LoRA
layers in its UNet). ``lora_scale=None`` (default) uses the training scale, the model the AU
attention was trained with; ``lora_scale=0`` reproduces the release's inference exactly.

A call encodes the planned AU vectors, puts the unconditional embedding first (batch order
``[uncond, cond]``, as the pipeline orders its text embeddings for classifier-free guidance)
and passes both in ``cross_attention_kwargs``. Each sample has its own CPU
``torch.Generator`` seeded with its plan seed, so its image does not depend on its
neighbours in the batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import load_file

from stages.generators.base import ForwardTimer, scheduler_by_name, to_uint8
from stages.generators.fineface.attention import AUCrossAttnProcessor, install_processors, processor_state_keys
from stages.generators.fineface.encoders import AUEncoder, FaceIDProjection, load_au_encoder, load_faceid_projection
from stages.generators.fineface.layout import FineFaceFiles, read_state_dict

__all__ = ["LORA_ADAPTER", "TRAINING_LORA_ALPHA", "FineFaceOutput", "FineFacePipeline"]

LORA_ADAPTER = "fineface"
# The release's train.py builds its LoraConfig without lora_alpha: peft's default, 8.
TRAINING_LORA_ALPHA = 8.0


@dataclass
class FineFaceOutput:
    images: np.ndarray  # (B, H, W, 3) uint8
    unet_seconds: float


def _load_base(files: FineFaceFiles, dtype: Any) -> Any:
    files.check()
    try:
        with warnings.catch_warnings():
            # diffusers >= 0.36 renamed torch_dtype to dtype; the old name works everywhere.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = StableDiffusionPipeline.from_pretrained(
                str(files.base_dir),
                local_files_only=True,
                torch_dtype=dtype,
                safety_checker=None,
                requires_safety_checker=False,
            )
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise files.fail(
            f"FineFace base folder {files.base_dir} cannot be loaded ({type(exc).__name__}: {exc})", exc
        ) from exc
    for part in ("unet", "vae", "text_encoder"):
        if any(p.is_meta for p in getattr(pipe, part).parameters()):
            # diffusers leaves weights a file lacks on the meta device instead of failing.
            raise files.fail(f"FineFace base folder {files.base_dir / part}/ lacks some of its weights")
    width = pipe.text_encoder.config.hidden_size
    if pipe.unet.config.cross_attention_dim != width:
        raise files.fail(
            f"FineFace base folder {files.base_dir}: the UNet attends to {pipe.unet.config.cross_attention_dim}-wide "
            f"tokens but the text encoder gives {width}"
        )
    return pipe


def _load_processors(
    unet: Any, files: FineFaceFiles, ip_state: dict[str, Any] | None
) -> dict[str, AUCrossAttnProcessor]:
    """Install the processors and load ``attn_processors.ckpt`` (and the IP-Adapter K/V) into them."""
    au = install_processors(unet, identity=ip_state is not None)
    path = files.path("attn_processors")
    state = read_state_dict(path, files)
    expected = processor_state_keys(au)
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [k for k, shape in expected.items() if k in state and tuple(state[k].shape) != shape]
    for problem, keys in (("lacks", missing), ("has unknown", extra), ("has wrongly shaped", wrong)):
        if keys:
            raise files.fail(
                f"FineFace file {path} {problem} AU weights for this base UNet ({len(keys)} of {len(expected)}; "
                f"first: {keys[0]}); it was made for another base model or variant"
            )
    positions = {key.removesuffix(".processor"): i for i, key in enumerate(unet.attn_processors)}
    with torch.no_grad():
        for layer, proc in au.items():
            proc.au_to_k.weight.copy_(state[f"{layer}.processor.au_to_k.weight"])
            proc.au_to_v.weight.copy_(state[f"{layer}.processor.au_to_v.weight"])
            if ip_state is not None:
                _copy_ip(proc, ip_state, positions[layer], files)
    return au


def _copy_ip(proc: AUCrossAttnProcessor, ip_state: dict[str, Any], position: int, files: FineFaceFiles) -> None:
    """IP-Adapter K/V are keyed by the layer's position among all the UNet's attention processors."""
    for part in ("to_k_ip", "to_v_ip"):
        key = f"{position}.{part}.weight"
        value = ip_state.get(key)
        target = getattr(proc, part).weight
        if not isinstance(value, torch.Tensor) or value.shape != target.shape:
            raise files.fail(
                f"FineFace file {files.faceid}: ip_adapter[{key!r}] is missing or not {tuple(target.shape)}"
            )
        target.copy_(value)


def _check_lora(unet: Any, files: FineFaceFiles) -> int:
    """Every LoRA key names a Linear of this UNet with matching widths (a named error, not a
    warning); returns the LoRA's rank."""
    path = files.path("lora")
    linears = {name: m for name, m in unet.named_modules() if isinstance(m, torch.nn.Linear)}
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise files.fail(f"FineFace file {path} is not a safetensors file ({type(exc).__name__}: {exc})", exc) from exc
    for key, shape in shapes.items():
        module, _, kind = key.removeprefix("unet.").rpartition(".lora_")
        linear = linears.get(module)
        ok = key.startswith("unet.") and linear is not None and kind in ("A.weight", "B.weight") and len(shape) == 2
        if ok and linear is not None:
            ok = shape[1] == linear.in_features if kind == "A.weight" else shape[0] == linear.out_features
        if not ok:
            raise files.fail(
                f"FineFace file {path}: LoRA weight {key!r} {shape} does not fit this base UNet "
                f"(expected unet.<Linear>.lora_A/lora_B.weight for to_q/to_k/to_v/to_out.0)"
            )
    ranks = {shape[0] for key, shape in shapes.items() if key.endswith("lora_A.weight")}
    if len(ranks) != 1:
        raise files.fail(f"FineFace file {path} holds no LoRA, or LoRAs of several ranks ({sorted(ranks)})")
    return ranks.pop()


def _load_lora(pipe: Any, files: FineFaceFiles, fuse: bool, scale: float | None) -> float:
    """Load the LoRA at ``scale`` (None: the training scale); returns the scale used."""
    rank = _check_lora(pipe.unet, files)
    scale = TRAINING_LORA_ALPHA / rank if scale is None else scale
    if scale == 0.0:
        return scale  # the release's inference pipeline: the file is checked, not applied
    path = files.path("lora")
    try:
        # The UNet's own loader (the text encoder has no LoRA in FineFace). No alpha is stored, so
        # diffusers reads alpha = rank (scale 1); the adapter weight sets the scale.
        pipe.unet.load_lora_adapter(load_file(str(path)), prefix="unet", adapter_name=LORA_ADAPTER)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise files.fail(f"FineFace file {path} cannot be loaded as a LoRA ({type(exc).__name__}: {exc})", exc) from exc
    if not any(isinstance(m, BaseTunerLayer) for m in pipe.unet.modules()):
        raise files.fail(f"FineFace file {path} changed no layer of the UNet; it is not the FineFace LoRA")
    if fuse:
        # Merged into the base weights: the same function, without the LoRA's extra matmuls per step.
        pipe.fuse_lora(components=["unet"], lora_scale=scale, adapter_names=[LORA_ADAPTER])
        pipe.unload_lora_weights()
    else:
        pipe.unet.set_adapters([LORA_ADAPTER], weights=[scale])
    return scale


class FineFacePipeline:
    """A loaded FineFace model: the diffusers pipeline, the AU encoder and, for FaceID, the projection."""

    def __init__(self, pipe: Any, au_encoder: AUEncoder, faceid: FaceIDProjection | None, device: str) -> None:
        self.pipe = pipe
        self.au_encoder = au_encoder
        self.faceid = faceid
        self.device = device
        self.timer = ForwardTimer(pipe.unet, device)
        self.lora_scale = 0.0

    @classmethod
    def from_files(
        cls,
        files: FineFaceFiles,
        *,
        device: str,
        dtype: Any,
        scheduler: str | None = None,
        fuse_lora: bool = True,
        lora_scale: float | None = None,
    ) -> FineFacePipeline:
        pipe = _load_base(files, dtype)
        width = pipe.text_encoder.config.hidden_size
        faceid_state = read_state_dict(files.faceid, files) if files.faceid is not None else None
        ip_state = faceid_state.get("ip_adapter") if faceid_state is not None else None
        if faceid_state is not None and not (
            isinstance(ip_state, dict) and isinstance(faceid_state.get("image_proj"), dict)
        ):
            raise files.fail(f"FineFace file {files.faceid} needs 'image_proj' and 'ip_adapter' state dicts")
        _load_processors(pipe.unet, files, ip_state)
        scale = _load_lora(pipe, files, fuse_lora, lora_scale) if files.lora is not None else 0.0
        au_path = files.path("au_encoder")
        au_encoder = load_au_encoder(read_state_dict(au_path, files), au_path, width, files)
        faceid = None
        if faceid_state is not None and files.faceid is not None:
            faceid = load_faceid_projection(faceid_state["image_proj"], files.faceid, width, files)
        if scheduler:
            pipe.scheduler = scheduler_by_name(scheduler, pipe.scheduler.config)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        # The encoders are tiny; float32 keeps the AU token exact (the processors cast it).
        au_encoder = au_encoder.to(device).eval()
        faceid = faceid.to(device=device, dtype=pipe.unet.dtype).eval() if faceid is not None else None
        loaded = cls(pipe, au_encoder, faceid, device)
        loaded.lora_scale = scale
        return loaded

    def compile_unet(self) -> None:
        """``torch.compile`` the UNet (fixed shapes: the caller pads every chunk to one size)."""
        unet = torch.compile(self.pipe.unet, fullgraph=False, dynamic=False)
        self.pipe.unet = unet
        self.timer.remove()
        self.timer = ForwardTimer(unet, self.device)

    def condition(
        self, aus: np.ndarray, guidance: bool, identity: np.ndarray | None, au_scale: float, ip_scale: float
    ) -> dict[str, Any]:
        """``cross_attention_kwargs``: AU (and FaceID) tokens, unconditional first under guidance."""
        vectors = torch.as_tensor(np.asarray(aus, dtype=np.float32), device=self.device)
        tokens = self.au_encoder(vectors)
        if guidance:
            tokens = torch.cat([self.au_encoder(torch.zeros_like(vectors)), tokens])
        kwargs: dict[str, Any] = {"au_embedding": tokens, "au_scale": float(au_scale)}
        if self.faceid is not None:
            if identity is None:
                raise ValueError("the FaceID variant needs an identity embedding per sample")
            embeds = torch.as_tensor(np.asarray(identity, dtype=np.float32), device=self.device)
            ids = self.faceid(embeds)
            if guidance:
                ids = torch.cat([self.faceid(torch.zeros_like(embeds)), ids])
            kwargs.update(image_embedding=ids, ip_scale=float(ip_scale))
        return kwargs

    def __call__(
        self,
        prompts: list[str],
        aus: np.ndarray,
        seeds: list[int],
        *,
        size: int,
        steps: int,
        guidance_scale: float,
        negative_prompt: str = "",
        au_scale: float = 1.0,
        identity: np.ndarray | None = None,
        ip_scale: float = 1.0,
    ) -> FineFaceOutput:
        guidance = guidance_scale > 1.0
        with torch.inference_mode(), self.timer.measure():
            kwargs = self.condition(aus, guidance, identity, au_scale, ip_scale)
            out = self.pipe(
                prompt=list(prompts),
                negative_prompt=[negative_prompt] * len(prompts) if guidance else None,
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=[torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds],
                cross_attention_kwargs=kwargs,
                output_type="np",
            )
        return FineFaceOutput(to_uint8(np.asarray(out.images)), self.timer.seconds)
