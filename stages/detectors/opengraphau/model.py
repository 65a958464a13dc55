"""OpenGraphAU networks (ME-GraphAU, Luo et al. IJCAI 2022), re-written in torch.

Structure and parameter names follow ``model/ANFL.py`` (stage 1) and ``model/MEFL.py``
(stage 2) of lingjivoo/OpenGraphAU (MIT), so the released ``OpenGprahAU-*_stage.pth``
checkpoints load with ``strict=True``. Checked once against the release code (random
weights copied across): identical keys and shapes, outputs equal to 1e-7, for ResNet-50
and Swin-B at stage 1 and ResNet-18/50 and Swin-T at stage 2. Stage 1:

- ``backbone.*``: ResNet (``fc`` removed) or Swin (``head`` removed), whose token
  sequence ``(B, N, C)`` feeds
- ``global_linear`` (:class:`LinearBlock`: ``fc`` + ``bn``) to ``C' = C/4`` (ResNet) or
  ``C/2`` (Swin), then
- ``head``: the AFG (27 per-AU ``main_class_linears``, averaged over tokens), the FGG graph
  layer ``gnn`` (``U``, ``V``, ``bnv``; top-K dot-product neighbours, K=4), then cosine
  similarity with the learnt class vectors ``main_sc`` (27) and, for the 7 AUs with
  left/right labels, ``sub_sc`` (14).

Stage 2 (``stage=2``, ME-GraphAU "MEFL") replaces the FGG layer with the GEM edge
extractor (``head.edge_extractor``: cross-attention ``FAM``/``ARM``, ``edge_proj``, ``bn``)
and a two-layer gated graph network with multi-dimensional edge features
(``head.gnn.graph_layers.{0,1}``: ``U``, ``V``, ``A``, ``B``, ``E``, ``bnv``, ``bne``).

The output is 41 cosine similarities, which the release thresholds at 0.5 as if they were
probabilities (its loss treats them as such too); :data:`VOCABULARY` names the columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stages.nets.checkpoint import state_dict_mismatch
from stages.nets.resnet import RESNET_SPECS, ResNetSpec, build_resnet
from stages.nets.swin import SWIN_SPECS, SwinSpec, build_swin

__all__ = [
    "ARCHS",
    "CHECKPOINT_NAMES",
    "MAIN_AUS",
    "MEFARG",
    "STAGE2_CHECKPOINT_NAMES",
    "SUB_AUS",
    "VOCABULARY",
    "CheckpointError",
    "build_mefarg",
    "checkpoint_name",
    "load_mefarg",
    "read_state_dict",
]

# The 27 bilateral AUs in output order (README / utils.hybrid_prediction_infolist).
MAIN_AUS: tuple[int, ...] = (
    1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 25, 26, 27, 32, 38, 39,
)  # fmt: skip
# The 14 side-specific outputs, L then R for each of these AUs (release labels L1 R1 ... R14).
SUB_AUS: tuple[int, ...] = (1, 2, 4, 6, 10, 12, 14)
# Spelled so stages.detectors.base.parse_au_name reads them ("AUL12" -> AU12, side L).
VOCABULARY: tuple[str, ...] = (
    *(f"AU{au}" for au in MAIN_AUS),
    *(f"AU{side}{au}" for au in SUB_AUS for side in ("L", "R")),
)
# Index of the main-AU node whose graph feature each L/R pair reads (ANFL.Head.sub_list).
# Note the release reads node 8 (AU11) for the AU12 L/R pair while its labels are L12/R12;
# we keep the release's wiring so its weights mean what they were trained to mean.
_SUB_NODE: tuple[int, ...] = (0, 1, 2, 4, 7, 8, 11)

# Release file names: the ResNet-50 ones appear in the README's demo commands, the others
# follow the same pattern (a Drive file saved under another name just needs `checkpoint`).
CHECKPOINT_NAMES: dict[str, str] = {
    "resnet18": "OpenGprahAU-ResNet18_first_stage.pth",
    "resnet50": "OpenGprahAU-ResNet50_first_stage.pth",
    "swin_tiny": "OpenGprahAU-SwinT_first_stage.pth",
    "swin_small": "OpenGprahAU-SwinS_first_stage.pth",
    "swin_base": "OpenGprahAU-SwinB_first_stage.pth",
}
# Stage 2 was released for these backbones only.
STAGE2_CHECKPOINT_NAMES: dict[str, str] = {
    "resnet18": "OpenGprahAU-ResNet18_second_stage.pth",
    "resnet50": "OpenGprahAU-ResNet50_second_stage.pth",
    "swin_tiny": "OpenGprahAU-SwinT_second_stage.pth",
}


def checkpoint_name(arch: str, stage: int = 1) -> str:
    """The release's file name for ``arch`` at ``stage`` ("?" when there is no release)."""
    return (CHECKPOINT_NAMES if stage == 1 else STAGE2_CHECKPOINT_NAMES).get(arch, "?")


@dataclass(frozen=True)
class _Arch:
    family: str  # "resnet" | "swin"
    spec: ResNetSpec | SwinSpec


# Module-level so a test can register a narrow variant with the same key layout.
ARCHS: dict[str, _Arch] = {
    **{name: _Arch("resnet", RESNET_SPECS[name]) for name in ("resnet18", "resnet50")},
    **{name: _Arch("swin", spec) for name, spec in SWIN_SPECS.items()},
}


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not fit the network."""


class LinearBlock(nn.Module):
    """Linear over the channel axis of ``(B, N, C)`` + BatchNorm1d over C + ReLU."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features)
        self.relu = nn.ReLU(inplace=True)
        nn.init.normal_(self.fc.weight, 0.0, math.sqrt(2.0 / out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x).permute(0, 2, 1)
        return self.relu(self.bn(x)).permute(0, 2, 1)


def _normalize_digraph(adj: torch.Tensor) -> torch.Tensor:
    """D^-1/2 A D^-1/2 per sample."""
    inv_sqrt = adj.sum(dim=-1) ** -0.5
    return inv_sqrt.unsqueeze(-1) * adj * inv_sqrt.unsqueeze(-2)


class GNN(nn.Module):
    """FGG: X' = ReLU(X + BN(V(X) aggregated over top-K neighbours + U(X)))."""

    def __init__(self, channels: int, num_nodes: int, neighbor_num: int = 4):
        super().__init__()
        self.neighbor_num = neighbor_num
        self.U = nn.Linear(channels, channels)
        self.V = nn.Linear(channels, channels)
        self.bnv = nn.BatchNorm1d(num_nodes)
        self.relu = nn.ReLU()
        nn.init.normal_(self.U.weight, 0.0, math.sqrt(2.0 / channels))
        nn.init.normal_(self.V.weight, 0.0, math.sqrt(2.0 / channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        si = x.detach()
        si = si @ si.transpose(1, 2)
        threshold = si.topk(k=self.neighbor_num, dim=-1).values[:, :, -1:]
        adj = (si >= threshold).float()
        aggregate = _normalize_digraph(adj) @ self.V(x)
        return self.relu(x + self.bnv(aggregate + self.U(x)))


class Head(nn.Module):
    def __init__(self, channels: int, num_main: int = 27, num_sub: int = 14, neighbor_num: int = 4):
        super().__init__()
        self.main_class_linears = nn.ModuleList(LinearBlock(channels, channels) for _ in range(num_main))
        self.gnn = GNN(channels, num_main, neighbor_num)
        self.main_sc = nn.Parameter(torch.zeros(num_main, channels))
        self.sub_sc = nn.Parameter(torch.zeros(num_sub, channels))
        nn.init.xavier_uniform_(self.main_sc)
        nn.init.xavier_uniform_(self.sub_sc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # AFG: one feature per AU, averaged over the tokens.
        f_v = torch.stack([layer(x).mean(dim=-2) for layer in self.main_class_linears], dim=1)
        return self.classify(self.gnn(f_v))

    def classify(self, f_v: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each node with its class vector(s): 27 main + 14 L/R."""
        unit = F.normalize(f_v, p=2, dim=-1)
        main_cl = (unit * F.normalize(F.relu(self.main_sc), p=2, dim=-1).unsqueeze(0)).sum(-1)
        sub_sc = F.normalize(F.relu(self.sub_sc), p=2, dim=-1)  # (14, C): L, R per pair
        nodes = unit[:, list(_SUB_NODE)]  # (B, 7, C)
        sub_cl = (nodes.repeat_interleave(2, dim=1) * sub_sc.unsqueeze(0)).sum(-1)
        return torch.cat([main_cl, sub_cl], dim=-1)


# --------------------------------------------------------------------------- stage 2 (MEFL)


class CrossAttn(nn.Module):
    """Queries from ``y``, keys/values from ``x`` (GEM's FAM and ARM)."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear_q = nn.Linear(channels, channels // 2)
        self.linear_k = nn.Linear(channels, channels // 2)
        self.linear_v = nn.Linear(channels, channels)
        self.scale = (channels // 2) ** -0.5
        nn.init.normal_(self.linear_q.weight, 0.0, math.sqrt(2.0 / (channels // 2)))
        nn.init.normal_(self.linear_k.weight, 0.0, math.sqrt(2.0 / (channels // 2)))
        nn.init.normal_(self.linear_v.weight, 0.0, math.sqrt(2.0 / channels))

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        dots = self.linear_q(y) @ self.linear_k(x).transpose(-2, -1) * self.scale
        return dots.softmax(dim=-1) @ self.linear_v(x)


class GEM(nn.Module):
    """Graph edge model: an edge feature for every ordered AU pair (i, j), index ``i * N + j``."""

    def __init__(self, channels: int, num_nodes: int):
        super().__init__()
        self.FAM = CrossAttn(channels)
        self.ARM = CrossAttn(channels)
        self.edge_proj = nn.Linear(channels, channels)
        self.bn = nn.BatchNorm2d(num_nodes * num_nodes)
        nn.init.normal_(self.edge_proj.weight, 0.0, math.sqrt(2.0 / channels))

    def forward(self, class_feature: torch.Tensor, global_feature: torch.Tensor) -> torch.Tensor:
        b, n, d, c = class_feature.shape
        global_feature = global_feature.repeat(1, n, 1).view(b, n, d, c)
        feat = self.FAM(class_feature, global_feature)
        feat_end = feat.repeat(1, 1, n, 1).view(b, -1, d, c)  # edge i*N+j -> node i
        feat_start = feat.repeat(1, n, 1, 1).view(b, -1, d, c)  # edge i*N+j -> node j
        return self.bn(self.edge_proj(self.ARM(feat_start, feat_end)))


def _edge_matrices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) incidence matrices ``(N*N, N)``: edge i*N+j starts at j and ends at i."""
    end = torch.zeros(n * n, n)
    for i in range(n):
        end[i * n : (i + 1) * n, i] = 1
    start = torch.eye(n).repeat(n, 1)
    return start, end


class GNNLayer(nn.Module):
    """Gated graph layer updating node and multi-dimensional edge features together."""

    def __init__(self, channels: int, num_nodes: int):
        super().__init__()
        self.num_nodes = num_nodes
        self.U = nn.Linear(channels, channels, bias=False)
        self.V = nn.Linear(channels, channels, bias=False)
        self.A = nn.Linear(channels, channels, bias=False)
        self.B = nn.Linear(channels, channels, bias=False)
        self.E = nn.Linear(channels, channels, bias=False)
        self.bnv = nn.BatchNorm1d(num_nodes)
        self.bne = nn.BatchNorm1d(num_nodes * num_nodes)
        self.act = nn.ReLU()
        for linear in (self.U, self.V, self.A, self.B, self.E):
            nn.init.normal_(linear.weight, 0.0, math.sqrt(2.0 / channels))

    def forward(
        self, x: torch.Tensor, edge: torch.Tensor, start: torch.Tensor, end: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.num_nodes
        edge = edge + self.act(self.bne(end @ self.A(x) + start @ self.B(x) + self.E(edge)))
        b, _, c = edge.shape
        gate = torch.sigmoid(edge).view(b, n, n, c).softmax(dim=2).view(b, -1, c)
        messages = gate * (start @ self.V(x))
        x = x + self.act(self.bnv(self.U(x) + end.t() @ messages / n))
        return x, edge


class EdgeGNN(nn.Module):
    def __init__(self, channels: int, num_nodes: int, layers: int = 2):
        super().__init__()
        start, end = _edge_matrices(num_nodes)
        # Not in the release's state dict (plain tensors there), hence non-persistent.
        self.register_buffer("start", start, persistent=False)
        self.register_buffer("end", end, persistent=False)
        self.graph_layers = nn.ModuleList(GNNLayer(channels, num_nodes) for _ in range(layers))

    def forward(self, x: torch.Tensor, edge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.graph_layers:
            x, edge = layer(x, edge, self.start, self.end)
        return x, edge


class Head2(Head):
    """Stage-2 head: AFG, then GEM edges + the edge-aware graph network, then the same classifier."""

    def __init__(self, channels: int, num_main: int = 27, num_sub: int = 14):
        super().__init__(channels, num_main, num_sub)
        self.edge_extractor = GEM(channels, num_main)
        self.gnn = EdgeGNN(channels, num_main, 2)  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f_u = torch.stack([layer(x) for layer in self.main_class_linears], dim=1)  # (B, N, D, C)
        f_e = self.edge_extractor(f_u, x).mean(dim=-2)
        f_v, _ = self.gnn(f_u.mean(dim=-2), f_e)
        return self.classify(f_v)


class MEFARG(nn.Module):
    """OpenGraphAU network; input ``(B, 3, 224, 224)`` ImageNet-normalised RGB."""

    def __init__(self, arch: str, stage: int = 1, neighbor_num: int = 4):
        super().__init__()
        try:
            spec = ARCHS[arch]
        except KeyError:
            raise ValueError(f"unknown OpenGraphAU backbone {arch!r}; known: {sorted(ARCHS)}") from None
        if spec.family == "resnet":
            self.backbone: nn.Module = build_resnet(spec.spec, num_classes=None)  # type: ignore[arg-type]
            in_channels = self.backbone.num_features
            out_channels = in_channels // 4
        else:
            self.backbone = build_swin(spec.spec, num_classes=None)  # type: ignore[arg-type]
            in_channels = self.backbone.num_features
            out_channels = in_channels // 2
        self.global_linear = LinearBlock(in_channels, out_channels)
        if stage not in (1, 2):
            raise ValueError(f"OpenGraphAU stage must be 1 or 2, got {stage}")
        self.head: nn.Module = (
            Head(out_channels, len(MAIN_AUS), 2 * len(SUB_AUS), neighbor_num)
            if stage == 1
            else Head2(out_channels, len(MAIN_AUS), 2 * len(SUB_AUS))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.global_linear(self.backbone.forward_features(x)))


def build_mefarg(arch: str, stage: int = 1) -> MEFARG:
    return MEFARG(arch, stage)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint file, unwrapped as the release's ``load_state_dict``.

    Accepts ``{"state_dict": ...}`` (the release, saved by its training script, with
    ``module.`` prefixes when trained under DataParallel), ``{"model": ...}`` or a bare
    state dict.
    """
    try:
        # weights_only: the release holds tensors, ints and the optimizer's plain dicts.
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # pickle/zip errors have many types; the file is what matters
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict (expected a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_mefarg(path: Path, arch: str, stage: int = 1) -> MEFARG:
    """Build ``arch`` (``stage`` 1 or 2) and load ``path`` strictly; mismatches name the first offending keys."""
    state = read_state_dict(path)
    net = build_mefarg(arch, stage)
    problem = state_dict_mismatch(net.state_dict(), state)
    if problem:
        raise CheckpointError(
            f"checkpoint {path} does not fit OpenGraphAU stage {stage} with backbone {arch!r}: "
            f"{problem}. Are `backbone` and `stage` right for this file (official name: "
            f"{checkpoint_name(arch, stage)})?"
        )
    net.load_state_dict(state, strict=True)
    return net.eval()
