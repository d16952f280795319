"""Which selected parameters EK-FAC factors, which get their own diagonal block, and why.

The rule (used by ``method="ekfac"``/``"kfac"`` and stated by ``method="auto"``):

* **Kronecker-factored**: the weight (and bias) of every ``nn.Linear``, ``nn.Conv1d`` and
  ``nn.Conv2d`` (groups=1, zero padding, no string padding) that the forward pass calls
  as a module, and the packed in-projection and the out-projection of every
  ``nn.MultiheadAttention`` used as self-attention (through taps,
  :func:`~infgate.influence.backends.taps.tap_attention`); in an MLflow ``pt2`` GraphModule
  (module types are gone) every ``aten.linear`` / ``aten.conv1d`` / ``aten.conv2d`` call
  whose weight is a selected parameter, including attention's sequence-major projections
  (:mod:`~infgate.influence.backends.graph_plan`).
* **Hooked diagonal blocks** (the Gauss-Newton diagonal, exact per coordinate, from the same
  hooks): normalisation scales and shifts of BatchNorm (eval) / LayerNorm / GroupNorm
  (:mod:`~infgate.influence.backends.norm_layers`; in a graph, ``aten.layer_norm`` and
  eval-mode ``aten.batch_norm`` calls) and embedding tables
  (:mod:`~infgate.influence.backends.embedding_layers`): looked up with per-example token
  ids, or with indices shared by the batch (a position table on ``arange(L)``) whose output
  is added to another table's, whose per-example output gradients it then shares.
* **Own diagonal block** from per-example ``torch.func`` gradients (exact per coordinate, no
  cross terms): every other selected parameter, with the reason: embedding tables looked up
  with indices shared by the batch whose per-example gradients no other table's output
  carries, tables with ``max_norm`` or ``scale_grad_by_freq``; attention key/value biases
  and cross-attention projections; PReLU slopes; a Linear/Conv the forward never calls as a
  module or one EK-FAC cannot factor (grouped, non-zero-padded, transposed or 3-D
  convolutions); the weights of recurrent layers (``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM``,
  whose native kernels ``vmap`` cannot batch: their per-example gradients run one example
  at a time); parameters of any other module (``nn.Bilinear``, custom modules holding raw
  parameters: a ViT's class token or position table); in a graph, every parameter no
  factored call uses, named with the ops that use it. Before fitting, a hook check
  (:mod:`~infgate.influence.backends.layer_check`) compares every hooked layer's per-example
  gradients with autograd's on two examples and moves any that disagree (tied weights,
  shared rows) here, with the reason.

Nothing is dropped silently: ``CurvatureChoice.own_block`` (the scan report, the MLflow
run, the store) names every parameter of the diagonal block and why it is there;
``params=`` leaves parameters out on purpose.
"""

from __future__ import annotations

import torch
from infgate.influence.backends.graph_plan import graph_plan
from infgate.influence.backends.layer_spec import (
    _NORMS,
    LayerPlan,
    LayerSpec,
    _conv_spec,
)
from infgate.influence.backends.taps import ConvTap, EmbeddingTap, LinearTap, tap_attention
from infgate.influence.gradients import GradientEngine
from torch import nn

__all__ = ["ConvTap", "EmbeddingTap", "LayerPlan", "LayerSpec", "LinearTap", "plan_layers"]


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


def _hookable_embedding(m: nn.Module) -> bool:
    """Embeddings whose per-example row gradients follow from hooks: plain lookups (no
    ``max_norm`` renormalisation, no per-batch ``scale_grad_by_freq``)."""
    return (
        isinstance(m, nn.Embedding)
        and m.max_norm is None
        and not m.scale_grad_by_freq
        and not m.weight.is_sparse
    )


def _module_plan(engine: GradientEngine) -> LayerPlan:
    selected = set(engine.names)
    layers: list[LayerSpec] = []
    own: dict[str, str] = {}
    tapped = tap_attention(engine.model)
    model, in_taps = tapped if tapped is not None else (engine.model, {})
    for path, module in model.named_modules():
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
        elif isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
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
            if _hookable_embedding(module) and mine == [w]:
                vocab, width = (int(v) for v in module.weight.shape)
                layers.append(
                    LayerSpec(path or "<root>", module, "embedding", w, None, width, vocab)
                )
        elif isinstance(module, nn.MultiheadAttention):
            proj = {f"{pre}in_proj_weight", f"{pre}in_proj_bias"} & set(mine)
            own.update({n: f"{label}: attention key/value bias" for n in set(mine) - proj})
            tap = in_taps.get(path)
            if tap is not None and f"{pre}in_proj_weight" in proj:
                wb = f"{pre}in_proj_bias" if f"{pre}in_proj_bias" in proj else None
                e = int(module.embed_dim)
                spec = LayerSpec(
                    f"{pre}in_proj", tap, "linear", f"{pre}in_proj_weight", wb, 3 * e, e
                )
                layers.append(spec)
            else:
                own.update({n: f"{label}: attention in-projection" for n in proj})
        elif isinstance(module, nn.PReLU):
            own.update({n: f"{label}: PReLU slope" for n in mine})
        elif isinstance(module, nn.RNNBase):
            own.update({n: f"{label}: recurrent weights (no Kronecker factors)" for n in mine})
        else:
            own.update({n: f"{label}: a module EK-FAC has no Kronecker factors for" for n in mine})
    return LayerPlan(layers, own, model=model if tapped is not None else None)


def plan_layers(engine: GradientEngine) -> LayerPlan:
    """Split the engine's selected parameters by the rule in the module docstring."""
    if isinstance(engine.model, torch.fx.GraphModule):
        return graph_plan(engine, engine.model)
    from infgate.influence.inputs import SplitInputs

    outer = engine.model
    if isinstance(outer, SplitInputs) and isinstance(outer.model, torch.fx.GraphModule):
        k = outer.k  # a pt2 model of several inputs: plan its graph, keep the wrapper
        return graph_plan(engine, outer.model, prefix="model.", wrap=lambda gm: SplitInputs(gm, k))
    return _module_plan(engine)
