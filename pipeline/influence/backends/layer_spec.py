"""The shared vocabulary of EK-FAC's layer plans (module and pt2 graph): one hooked layer's
spec, the plan, and the aten ops each plan maps (the rule is in
:mod:`~infgate.influence.backends.layer_plan`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["LayerPlan", "LayerSpec"]

_NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_aten = torch.ops.aten
_GRAPH_FACTORED = {
    _aten.linear.default: "linear",
    _aten.conv1d.default: "conv1d",
    _aten.conv2d.default: "conv2d",
}
#: Defaults of aten.conv*d's stride, padding and dilation arguments.
_GEO: tuple[list[int], ...] = ([1], [0], [1])


@dataclass(frozen=True)
class LayerSpec:
    """One Kronecker-factored layer: where to hook it and its geometry."""

    path: str
    module: nn.Module
    kind: str  # "linear", "conv1d", "conv2d"; "norm" or "embedding" (hooked diagonal blocks)
    weight: str | None
    bias: str | None
    out_dim: int
    in_dim: int  # inputs per location (in_features, or in_channels x kernel area)
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    #: where a dense call's rows keep the batch: ``0`` (``(B, ...)``), or ``(seq, dim)``
    #: for a pt2 graph's attention projections: ``(L, 1)`` = ``(L, B, in)`` inputs,
    #: ``(L, 0)`` = ``(L * B, in)`` rows in sequence-major order.
    seq_major: tuple[int, int] | None = None


@dataclass(frozen=True)
class LayerPlan:
    """The split of the selected parameters (see the module docstring for the rule)."""

    layers: list[LayerSpec]
    own_block: dict[str, str] = field(default_factory=dict)  # name -> reason
    model: nn.Module | None = None  # tapped copy of a GraphModule (hooks live on its taps)

    @property
    def factored_names(self) -> list[str]:
        """Kronecker-factored parameters (hooked diagonal blocks of norms and embedding
        tables excluded)."""
        return [
            n
            for s in self.layers
            if s.kind not in ("norm", "embedding")
            for n in (s.weight, s.bias)
            if n
        ]

    @property
    def hooked_names(self) -> list[str]:
        """Parameters of every hooked layer (factored, or a norm's diagonal block)."""
        return [n for s in self.layers for n in (s.weight, s.bias) if n]


def _pair(v: Any, dims: int, default: int) -> tuple[int, int]:
    vals = list(v) if isinstance(v, list | tuple) else [default if v is None else int(v)] * dims
    if len(vals) == 1:
        vals = vals * dims
    # a 1-D layer runs as 2-D on a height-1 image: the height axis gets the neutral value
    return (default, int(vals[0])) if dims == 1 else (int(vals[0]), int(vals[1]))


def _conv_spec(
    path: str, module: nn.Module, kind: str, weight: str | None, bias: str | None, w_shape: Any
) -> LayerSpec:
    dims = 1 if kind == "conv1d" else 2
    out_c, in_c, *kernel = (int(v) for v in w_shape)
    ks = (1, kernel[0]) if dims == 1 else (kernel[0], kernel[1])
    return LayerSpec(
        path,
        module,
        kind,
        weight,
        bias,
        out_dim=out_c,
        in_dim=in_c * ks[0] * ks[1],
        kernel_size=ks,
        stride=_pair(getattr(module, "stride", 1), dims, 1),
        padding=_pair(getattr(module, "padding", 0), dims, 0),
        dilation=_pair(getattr(module, "dilation", 1), dims, 1),
    )
