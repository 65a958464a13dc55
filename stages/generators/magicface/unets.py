"""MagicFace's two UNets as stock diffusers UNets, loaded strictly, and the identity attention.

The release subclasses every UNet, block and transformer module to thread a list of identity
tensors through them. The same model in stock diffusers terms:

- ``ID_enc`` is a stock ``UNet2DConditionModel``; forward pre-hooks on its
  ``BasicTransformerBlock`` s record each block's input (before ``norm1``) during one pass at
  t = 0 (:func:`identity_features`; 16 tensors for SD 1.5).
- ``denoising_unet`` is a stock UNet with ``in_channels = 8`` (the release concatenates the
  "bg" latents before ``conv_in``) and ``class_embed_type = "simple_projection"`` with 12
  inputs: the release's ``au_aug_mlp`` (a ``Linear`` added to the time embedding before its
  activation) is exactly that, under the key ``class_embedding``.
- The release's block concatenates its tokens with the identity tensor, runs ``norm1`` and
  self-attention over both, adds the residual and keeps the first half. ``norm1`` works per
  token and the kept rows' queries come only from the block's own tokens, so the same
  output is :class:`IdentityAttnProcessor`: queries from the own tokens, keys and values from
  own + identity tokens, where the identity keys and values (``to_k``/``to_v`` of
  ``norm1(identity)``) depend only on the identity and are computed once per identity
  (:func:`identity_kv`).

Loading is strict (the release passes ``ignore_mismatched_sizes=True``, which re-initialises
a mismatched weight silently): a missing, unknown or wrongly shaped key is one error naming
the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from safetensors.torch import load_file

from stages.generators.magicface.layout import MagicFaceFiles

__all__ = [
    "AU_COUNT",
    "IdentityAttnProcessor",
    "IdentityKV",
    "identity_features",
    "identity_kv",
    "install_identity_attention",
    "load_unet",
    "transformer_blocks",
]

AU_COUNT = 12
_AU_KEY = "au_aug_mlp."  # the release's name for the AU projection
_CONFIG_DROP = ("_class_name", "_diffusers_version", "_name_or_path")

IdentityKV = dict[str, tuple[torch.Tensor, torch.Tensor]]  # block name -> (keys, values), (1, N, inner)


def load_unet(files: MagicFaceFiles, name: str, dtype: torch.dtype) -> Any:
    """``ID_enc`` (4 input channels) or ``denoising_unet`` (8, plus the AU projection), strictly."""
    denoising = name == "denoising_unet"
    config = {k: v for k, v in files.config(name).items() if k not in _CONFIG_DROP}
    # The release's classes fix these whatever the config says: conv_in reads latents (+ bg).
    config["in_channels"] = 8 if denoising else 4
    if denoising:
        config.update(class_embed_type="simple_projection", projection_class_embeddings_input_dim=AU_COUNT)
    folder = files.unet_dir(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown config keys of newer/older diffusers
            unet = UNet2DConditionModel.from_config(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise files.fail(f"MagicFace file {folder / 'config.json'} is not a UNet config ({exc})", exc) from exc
    path = folder / "diffusion_pytorch_model.safetensors"
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise files.fail(f"MagicFace file {path} is not a safetensors file ({type(exc).__name__}: {exc})", exc) from exc
    if denoising:
        state = {("class_embedding." + k[len(_AU_KEY) :] if k.startswith(_AU_KEY) else k): v for k, v in state.items()}
    expected = unet.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    for problem, keys in (("lacks", missing), ("has unknown", extra), ("has wrongly shaped", wrong)):
        if keys:
            raise files.fail(
                f"MagicFace file {path} {problem} weights for the {name} UNet its config.json describes "
                f"({len(keys)} of {len(expected)}; first: {keys[0]})"
            )
    unet.load_state_dict(state, strict=True)
    return unet.to(dtype=dtype).eval().requires_grad_(False)


def transformer_blocks(unet: Any) -> dict[str, Any]:
    """Every ``BasicTransformerBlock`` by module name, in forward order (down, mid, up)."""
    return {n: m for n, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)}


@contextmanager
def _recording(unet: Any) -> Iterator[dict[str, torch.Tensor]]:
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, block in transformer_blocks(unet).items():

        def hook(_: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str = name) -> None:
            seen[name] = args[0] if args else kwargs["hidden_states"]

        handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def identity_features(id_unet: Any, source_latents: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each transformer block's input during ``ID_enc`` at t = 0 on the (unscaled) source latents."""
    with _recording(id_unet) as seen:
        id_unet(source_latents, 0, encoder_hidden_states=text, return_dict=False)
    return dict(seen)


def identity_kv(deno_unet: Any, features: dict[str, torch.Tensor]) -> IdentityKV:
    """Keys and values of the identity tokens for every block's self-attention (once per identity)."""
    out: IdentityKV = {}
    for name, block in transformer_blocks(deno_unet).items():
        tokens = block.norm1(features[name])
        out[name] = (block.attn1.to_k(tokens), block.attn1.to_v(tokens))
    return out


class IdentityAttnProcessor:
    """Self-attention over the block's own tokens and its identity tokens (keys/values given)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.kv: tuple[torch.Tensor, torch.Tensor] | None = None  # (B, N, inner), set per call

    def __call__(self, attn: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.kv is None:
            raise RuntimeError(f"identity keys/values for {self.name} were not set")
        id_k, id_v = self.kv
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = torch.cat([attn.to_k(hidden_states), id_k], dim=1)
        value = torch.cat([attn.to_v(hidden_states), id_v], dim=1)
        head = key.shape[-1] // attn.heads
        q, k, v = (x.view(batch, -1, attn.heads, head).transpose(1, 2) for x in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def install_identity_attention(deno_unet: Any) -> dict[str, IdentityAttnProcessor]:
    """Our processor on every block's ``attn1``; returns them by block name."""
    processors: dict[str, IdentityAttnProcessor] = {}
    for name, block in transformer_blocks(deno_unet).items():
        attn = block.attn1
        if attn.norm_q is not None or attn.residual_connection or attn.rescale_output_factor != 1.0:
            raise ValueError(f"{name}.attn1 is not an SD 1.5 self-attention (normed or rescaled)")
        processors[name] = IdentityAttnProcessor(name)
        attn.set_processor(processors[name])
    return processors
