"""The EK-FAC layer plan of an MLflow ``pt2`` GraphModule (``torch.export``): module types
are gone, so every ``aten.linear`` / ``aten.conv1d`` / ``aten.conv2d`` / ``aten.embedding``
call whose weight is a selected parameter is replaced by a tap module in a copy of the graph
(see :mod:`~infgate.influence.backends.taps`), with the row layout of its input: batch
first, or sequence-major as ``multi_head_attention_forward`` lays out its projections. The
rule is the one in :mod:`~infgate.influence.backends.layer_plan`.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from collections.abc import Callable
from typing import Any

import torch
from infgate.influence.backends.layer_spec import (
    _GEO,
    _GRAPH_FACTORED,
    LayerPlan,
    LayerSpec,
    _aten,
    _conv_spec,
)
from infgate.influence.backends.taps import (
    BatchNormTap,
    ConvTap,
    EmbeddingTap,
    LayerNormTap,
    LinearTap,
)
from infgate.influence.gradients import GradientEngine
from torch import nn

__all__ = ["graph_plan"]

_GRAPH_NORMS = (
    _aten.layer_norm.default,
    _aten.batch_norm.default,
    _aten._native_batch_norm_legit_no_training.default,
)


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


def _tap_embedding(
    gm: torch.fx.GraphModule,
    node: torch.fx.Node,
    attr_of: dict[torch.fx.Node, Any],
    open_names: set[str],
    batch: Any,
    idx: int,
    named: dict[str, nn.Parameter],
    layers: list[LayerSpec],
) -> bool:
    """Replace ``aten.embedding(weight, indices, padding_idx, scale_grad_by_freq, sparse)``
    by an :class:`EmbeddingTap` when its weight is selected and gradients are not rescaled
    by in-batch frequency; append its spec."""
    args: list[Any] = list(node.args)
    w = attr_of.get(args[0])
    scale = bool(args[3]) if len(args) > 3 else bool(node.kwargs.get("scale_grad_by_freq"))
    if not (isinstance(w, str) and w in open_names) or scale:
        return False  # (indices shared by the batch are tapped too: the hook check decides)
    pad = int(args[2]) if len(args) > 2 else int(node.kwargs.get("padding_idx", -1))  # type: ignore[arg-type]
    tap = EmbeddingTap(pad if pad >= 0 else None)
    name = f"_infgate_tap_{idx}"
    gm.add_submodule(name, tap)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, args=(args[1], args[0]))
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    vocab, width = (int(v) for v in named[w].shape)
    layers.append(LayerSpec(w.rsplit(".", 1)[0], tap, "embedding", w, None, width, vocab))
    return True


def _seq_major(arg: Any, batch: Any) -> tuple[int, int] | None:
    """``(L, 1)`` when a linear's input is ``(L, B, in)``; ``(L, 0)`` when it is the
    ``(L * B, in)`` flattening of an ``(L, B, ...)`` tensor (what ``multi_head_attention_forward``
    feeds its out-projection); else ``None``."""
    val = getattr(arg, "meta", {}).get("val")
    if batch is None or not isinstance(val, torch.Tensor) or val.ndim < 2:
        return None
    if val.ndim == 3 and str(val.shape[1]) == str(batch) and isinstance(val.shape[0], int):
        return (int(val.shape[0]), 1)
    src = arg.args[0] if getattr(arg, "op", "") == "call_function" and arg.args else None
    name = str(getattr(getattr(arg, "target", None), "__name__", ""))
    sval = getattr(src, "meta", {}).get("val") if src is not None else None
    if (
        val.ndim == 2
        and name.split(".")[0] in ("reshape", "view", "_unsafe_view")
        and isinstance(sval, torch.Tensor)
        and sval.ndim >= 3
        and isinstance(sval.shape[0], int)
        and str(sval.shape[1]) == str(batch)
    ):
        return (int(sval.shape[0]), 0)
    return None


def _tap_norm(
    gm: torch.fx.GraphModule,
    node: torch.fx.Node,
    attr_of: dict[torch.fx.Node, Any],
    open_names: set[str],
    batch: Any,
    idx: int,
    layers: list[LayerSpec],
) -> bool:
    """Replace an ``aten.layer_norm`` call, or an eval-mode batch norm (``aten.batch_norm``
    with ``training=False``, or ``_native_batch_norm_legit_no_training(...)[0]``), whose
    scale/shift are selected and whose input leads with the batch, by a
    :class:`LayerNormTap` / :class:`BatchNormTap` (a hooked diagonal block, as for norm
    modules); append its spec."""
    args: list[Any] = list(node.args)
    layer_norm = node.target is _aten.layer_norm.default
    w_at, b_at = (2, 3) if layer_norm else (1, 2)
    w = attr_of.get(args[w_at]) if len(args) > w_at else None
    b = attr_of.get(args[b_at]) if len(args) > b_at else None
    w = w if isinstance(w, str) and w in open_names else None
    b = b if isinstance(b, str) and b in open_names else None
    if (w is None and b is None) or not _leads_with(args[0], batch):
        return False
    name = f"_infgate_tap_{idx}"
    if layer_norm:
        eps = float(args[4]) if len(args) > 4 else 1e-5
        tap: nn.Module = LayerNormTap([int(v) for v in args[1]], eps)
        call_args: tuple[Any, ...] = (args[0], args[w_at], args[b_at] if len(args) > b_at else None)
        target = node
    elif node.target is _aten.batch_norm.default:  # (x, w, b, mean, var, training, m, eps)
        val = getattr(args[3], "meta", {}).get("val") if len(args) > 7 else None
        if bool(args[5]) or not isinstance(val, torch.Tensor):
            return False
        tap = BatchNormTap(int(val.numel()), float(args[7]))
        call_args = (args[0], args[1], args[2], args[3], args[4])
        target = node
    else:
        first = [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]
        if len(first) != 1 or len(args) < 7:
            return False
        val = getattr(args[3], "meta", {}).get("val")
        if not isinstance(val, torch.Tensor):
            return False
        tap = BatchNormTap(int(val.numel()), float(args[6]))
        call_args = (args[0], args[1], args[2], args[3], args[4])
        target = first[0]
    gm.add_submodule(name, tap)
    with gm.graph.inserting_after(target):
        new = gm.graph.call_module(name, args=call_args)
    target.replace_all_uses_with(new)
    gm.graph.erase_node(target)
    if target is not node and not node.users:
        gm.graph.erase_node(node)
    width = int(getattr(tap, "num_features", 0)) or int(
        torch.Size([int(v) for v in args[1]]).numel() if layer_norm else 0
    )
    path = str(w or b).rsplit(".", 1)[0]
    layers.append(LayerSpec(path, tap, "norm", w, b, width, 1))
    return True


def graph_plan(
    engine: GradientEngine,
    gm: torch.fx.GraphModule,
    *,
    prefix: str = "",
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> LayerPlan:
    """The plan of ``gm``; ``prefix`` is what the engine's parameter names carry before
    ``gm``'s own (``"model."`` when ``gm`` sits in a wrapper, e.g.
    :class:`~infgate.influence.SplitInputs`), and ``wrap`` rebuilds that wrapper around the
    tapped copy, so the plan's model takes the engine's inputs and parameter names."""
    if prefix:
        outer = [n for n in engine.names if not n.startswith(prefix)]
        if outer:
            raise ValueError(f"graph_plan: parameters {outer[:3]} are not under {prefix!r}")
    names = [n[len(prefix) :] for n in engine.names]
    selected = set(names)
    tapped = copy.deepcopy(gm)
    graph = tapped.graph
    layers: list[LayerSpec] = []
    own: dict[str, str] = {}
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
        if node.target is _aten.embedding.default and _tap_embedding(
            tapped, node, attr_of, selected - done, batch, len(layers), named, layers
        ):
            done.add(str(layers[-1].weight))
            continue
        if node.target in _GRAPH_NORMS and _tap_norm(
            tapped, node, attr_of, selected - done, batch, len(layers), layers
        ):
            done.update(n for n in (layers[-1].weight, layers[-1].bias) if n)
            continue
        w = attr_of.get(args[1]) if kind and len(args) > 1 else None
        seq_major = None
        if kind == "linear" and isinstance(w, str) and not _leads_with(args[0], batch):
            seq_major = _seq_major(args[0], batch)
            if seq_major is None:
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
                        w.rsplit(".", 1)[0], tap, "linear", w, b, int(shape[0]), int(shape[1]),
                        seq_major=seq_major,
                    )  # fmt: skip
                else:
                    spec = _conv_spec(w.rsplit(".", 1)[0], tap, kind, w, b, shape)
                layers.append(spec)
                done.update(n for n in (w, b) if n)
    factored = {n for s in layers for n in (s.weight, s.bias) if n}
    for name in names:
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
        own[name] = f"{name}: used by {', '.join(ops) or 'no op'} in the pt2 graph"
    tapped.recompile()
    if prefix:
        layers = [
            dataclasses.replace(
                spec,
                path=prefix + spec.path,
                weight=prefix + spec.weight if spec.weight else None,
                bias=prefix + spec.bias if spec.bias else None,
            )
            for spec in layers
        ]
        own = {prefix + k: v for k, v in own.items()}
    model = (wrap(tapped) if wrap is not None else tapped) if layers else None
    return LayerPlan(layers, own, model=model)
