"""Which selected parameters EK-FAC factors, which get their own diagonal block, and why.

The rule (used by ``method="ekfac"``/``"kfac"`` and stated by ``method="auto"``):

* **Kronecker-factored**: the weight (and bias) of every ``nn.Linear``, ``nn.Conv1d`` and
  ``nn.Conv2d`` (groups=1, zero padding, no string padding) that the forward pass calls
  as a module; in an MLflow ``pt2`` GraphModule (module types are gone) every
  ``aten.linear`` / ``aten.conv1d`` / ``aten.conv2d`` call whose weight is a selected
  parameter, tapped in a copy of the graph.
* **Own diagonal block** (the Gauss-Newton diagonal of those parameters, exact per
  coordinate, no cross terms): normalisation scales and shifts (from hooks on BatchNorm /
  LayerNorm / GroupNorm modules, see :mod:`~infgate.influence.backends.norm_layers`),
  embedding tables, attention in-projections (``MultiheadAttention.in_proj_weight`` and
  ``in_proj_bias``), PReLU slopes, a Linear/Conv the forward never calls as a module
  (``MultiheadAttention.out_proj``) or one EK-FAC cannot factor (grouped or non-zero-padded
  convolutions); in a graph, parameters consumed by normalisation, embedding or elementwise ops.
* **Refused**: a parameter of any other kind (recurrent layers, custom modules holding raw
  parameters, unknown graph ops): :class:`~infgate.errors.InvalidInputError` naming the
  module and suggesting ``params=`` to leave it out on purpose. Nothing is dropped silently.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from infgate.errors import InvalidInputError
from infgate.influence.gradients import GradientEngine
from torch import nn

__all__ = ["ConvTap", "LayerPlan", "LayerSpec", "LinearTap", "plan_layers"]

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
#: Graph ops whose parameter inputs get a diagonal block (name prefixes of aten overloads).
_GRAPH_DIAGONAL = (
    "layer_norm",
    "native_layer_norm",
    "batch_norm",
    "_native_batch_norm_legit_no_training",
    "group_norm",
    "native_group_norm",
    "rms_norm",
    "embedding",
    "add",
    "sub",
    "mul",
    "div",
    "prelu",
    "linear",
    "conv1d",
    "conv2d",
    "addmm",
    "mm",
    "matmul",
    "t",
    "transpose",
    "view",
    "reshape",
    "expand",
    "unsqueeze",
    "squeeze",
    "permute",
    "split",
    "chunk",
    "_native_multi_head_attention",
)


@dataclass(frozen=True)
class LayerSpec:
    """One Kronecker-factored layer: where to hook it and its geometry."""

    path: str
    module: nn.Module
    kind: str  # "linear", "conv1d", "conv2d", or "norm" (a hooked diagonal block)
    weight: str | None
    bias: str | None
    out_dim: int
    in_dim: int  # inputs per location (in_features, or in_channels x kernel area)
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)


@dataclass(frozen=True)
class LayerPlan:
    """The split of the selected parameters (see the module docstring for the rule)."""

    layers: list[LayerSpec]
    own_block: dict[str, str] = field(default_factory=dict)  # name -> reason
    model: nn.Module | None = None  # tapped copy of a GraphModule (hooks live on its taps)

    @property
    def factored_names(self) -> list[str]:
        """Kronecker-factored parameters (norm layers' diagonal blocks excluded)."""
        return [n for s in self.layers if s.kind != "norm" for n in (s.weight, s.bias) if n]

    @property
    def hooked_names(self) -> list[str]:
        """Parameters of every hooked layer (factored, or a norm's diagonal block)."""
        return [n for s in self.layers for n in (s.weight, s.bias) if n]


class LinearTap(nn.Module):
    """Stands in for an ``aten.linear`` call of a pt2 graph so a forward hook can see it."""

    def forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return F.linear(x, weight, bias)


class ConvTap(nn.Module):
    """Stands in for an ``aten.conv1d``/``conv2d`` call of a pt2 graph."""

    def __init__(self, dims: int, stride: Any, padding: Any, dilation: Any, groups: int) -> None:
        super().__init__()
        self.dims, self.stride, self.padding = dims, stride, padding
        self.dilation, self.groups = dilation, groups

    def forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        fn = F.conv1d if self.dims == 1 else F.conv2d
        return fn(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


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


def _factorable_conv(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.Conv1d | nn.Conv2d)
        and m.groups == 1
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
    )


def _hookable_norm(m: nn.Module) -> bool:
    """Norms whose per-example scale/shift gradients follow from hooks: BatchNorm with
    running statistics (eval mode), LayerNorm, GroupNorm."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return bool(m.track_running_stats and m.running_mean is not None)
    return isinstance(m, nn.LayerNorm | nn.GroupNorm)


def _module_plan(engine: GradientEngine) -> LayerPlan:
    selected = set(engine.names)
    layers: list[LayerSpec] = []
    own: dict[str, str] = {}
    refused: list[str] = []
    for path, module in engine.model.named_modules():
        pre = f"{path}." if path else ""
        mine = [f"{pre}{n}" for n, _ in module.named_parameters(recurse=False)]
        mine = [n for n in mine if n in selected]
        if not mine:
            continue
        w = f"{pre}weight" if f"{pre}weight" in selected else None
        b = f"{pre}bias" if f"{pre}bias" in selected else None
        label = f"{path or '<root>'} ({type(module).__name__})"
        if isinstance(module, nn.Linear) and set(mine) <= {w, b}:
            layers.append(
                LayerSpec(
                    path or "<root>",
                    module,
                    "linear",
                    w,
                    b,
                    module.out_features,
                    module.in_features,
                )
            )
        elif _factorable_conv(module) and set(mine) <= {w, b}:
            kind = "conv1d" if isinstance(module, nn.Conv1d) else "conv2d"
            layers.append(_conv_spec(path or "<root>", module, kind, w, b, module.weight.shape))
        elif isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            own.update({n: f"{label}: a convolution EK-FAC cannot factor" for n in mine})
        elif isinstance(module, _NORMS):
            own.update({n: f"{label}: normalisation scale/shift" for n in mine})
            if _hookable_norm(module) and set(mine) <= {w, b}:
                width = int(module.weight.numel() if module.weight is not None else 0) or int(
                    module.bias.numel()  # type: ignore[union-attr]
                )
                layers.append(LayerSpec(path or "<root>", module, "norm", w, b, width, 1))
        elif isinstance(module, nn.Embedding | nn.EmbeddingBag):
            own.update({n: f"{label}: embedding table" for n in mine})
        elif isinstance(module, nn.MultiheadAttention):
            own.update({n: f"{label}: attention in-projection" for n in mine})
        elif isinstance(module, nn.PReLU):
            own.update({n: f"{label}: PReLU slope" for n in mine})
        else:
            refused.append(f"{label} holding {mine[:3]}")
    if refused:
        raise InvalidInputError(
            f"method='ekfac'/'auto' cannot handle the parameters of {refused[0]}"
            f"{f' (and {len(refused) - 1} more)' if len(refused) > 1 else ''}: select the "
            f"parameters to differentiate with params= (e.g. params=['fc', 'conv1']) or use "
            f"method='arnoldi'"
        )
    return LayerPlan(layers, own)


def _graph_batch_size(graph: torch.fx.Graph) -> Any:
    """The first input's (symbolic) batch size in an exported graph, or ``None``."""
    for node in graph.nodes:
        if node.op == "placeholder" and node.users:
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.ndim:
                return val.shape[0]
    return None


def _leads_with(arg: Any, batch: Any) -> bool:
    """Whether a graph value's first dimension is the batch (unknown = assume so). A linear
    on ``(L, B, E)`` or on ``(L * B, E)`` rows (``nn.MultiheadAttention`` inside a pt2
    graph) must not be read as ``(B, T, E)``: its rows would be attributed to the wrong
    examples."""
    val = getattr(arg, "meta", {}).get("val")
    if batch is None or not isinstance(val, torch.Tensor) or not val.ndim:
        return True
    return str(val.shape[0]) == str(batch)


def _graph_plan(engine: GradientEngine, gm: torch.fx.GraphModule) -> LayerPlan:
    selected = set(engine.names)
    tapped = copy.deepcopy(gm)
    graph = tapped.graph
    layers: list[LayerSpec] = []
    own: dict[str, str] = {}
    refused: list[str] = []
    attr_of = {n: n.target for n in graph.nodes if n.op == "get_attr"}
    named = dict(tapped.named_parameters())
    done: set[str] = set()
    batch = _graph_batch_size(graph)
    unbatched: set[str] = set()  # linear calls whose input does not lead with the batch
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        kind = _GRAPH_FACTORED.get(node.target)
        args = list(node.args)
        w = attr_of.get(args[1]) if kind and len(args) > 1 else None
        if kind == "linear" and isinstance(w, str) and not _leads_with(args[0], batch):
            b_node = args[2] if len(args) > 2 else node.kwargs.get("bias")
            unbatched.update(n for n in (w, attr_of.get(b_node)) if isinstance(n, str))
            continue
        if kind and isinstance(w, str) and w in selected and w not in done:
            b_node = args[2] if len(args) > 2 else node.kwargs.get("bias")
            b = attr_of.get(b_node) if b_node is not None else None
            b = b if isinstance(b, str) and b in selected else None
            groups = int(args[6]) if len(args) > 6 else 1
            if kind == "linear" or groups == 1:
                idx = len(layers)
                if kind == "linear":
                    tap: nn.Module = LinearTap()
                else:
                    dims = 1 if kind == "conv1d" else 2
                    geo = [args[3 + i] if len(args) > 3 + i else d for i, d in enumerate(_GEO)]
                    tap = ConvTap(dims, geo[0], geo[1], geo[2], groups)
                name = f"_infgate_tap_{idx}"
                tapped.add_submodule(name, tap)
                with graph.inserting_after(node):
                    new = graph.call_module(name, args=tuple(args[:3]))
                node.replace_all_uses_with(new)
                graph.erase_node(node)
                shape = named[w].shape
                if kind == "linear":
                    spec = LayerSpec(
                        w.rsplit(".", 1)[0], tap, "linear", w, b, int(shape[0]), int(shape[1])
                    )
                else:
                    spec = _conv_spec(w.rsplit(".", 1)[0], tap, kind, w, b, shape)
                layers.append(spec)
                done.update(n for n in (w, b) if n)
    factored = {n for s in layers for n in (s.weight, s.bias) if n}
    for name in engine.names:
        if name in factored:
            continue
        if name in unbatched:
            own[name] = (
                f"{name}: a linear call on a tensor that does not lead with the batch "
                f"(attention projections) in the pt2 graph"
            )
            continue
        users = [u for g, t in attr_of.items() if t == name for u in g.users]
        ops = sorted({str(getattr(u.target, "__name__", u.target)) for u in users})
        bases = {op.split(".")[0] for op in ops}
        if users and all(b in _GRAPH_DIAGONAL for b in bases):
            own[name] = f"{name}: used by {', '.join(ops)} in the pt2 graph"
        else:
            refused.append(f"{name} (graph ops {ops or ['none']})")
    if refused:
        raise InvalidInputError(
            f"method='ekfac'/'auto' cannot handle the parameter {refused[0]}"
            f"{f' (and {len(refused) - 1} more)' if len(refused) > 1 else ''}: select the "
            f"parameters to differentiate with params= or use method='arnoldi'"
        )
    tapped.recompile()
    return LayerPlan(layers, own, model=tapped if layers else None)


def plan_layers(engine: GradientEngine) -> LayerPlan:
    """Split the engine's selected parameters by the rule in the module docstring."""
    if isinstance(engine.model, torch.fx.GraphModule):
        return _graph_plan(engine, engine.model)
    return _module_plan(engine)
