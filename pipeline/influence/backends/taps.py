"""Modules that make functional calls visible to forward hooks (EK-FAC's capture).

* :class:`LinearTap` / :class:`ConvTap` / :class:`EmbeddingTap` stand in for an
  ``aten.linear`` / ``aten.conv*d`` / ``aten.embedding`` call of a pt2 graph (module types
  are gone there), so a hook sees the call's input and output.
* :func:`tap_attention` gives each ``nn.MultiheadAttention`` of a module model a forward that
  computes the packed in-projection through a :class:`LinearTap` on ``(B, L, E)`` inputs and
  calls ``out_proj`` as a module (PyTorch's own forward uses both weights functionally, so no
  hook sees them). The attention itself is unchanged: the common case (no masks, no
  attention weights, no key/value biases) runs ``scaled_dot_product_attention`` on the
  projected heads, every other case hands the projected ``q, k, v`` to PyTorch's
  ``multi_head_attention_forward`` with identity projections, which keeps its mask,
  causal, ``bias_k`` and ``add_zero_attn`` semantics exactly. Cross-attention (query, key
  and value not one tensor) and separate projection weights fall back to PyTorch's forward;
  the capture then sees no call and those weights get EK-FAC's own diagonal block.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BatchNormTap",
    "ConvTap",
    "EmbeddingTap",
    "LayerNormTap",
    "LinearTap",
    "TappedMultiheadAttention",
    "tap_attention",
]

#: Name of the in-projection tap added to each tapped ``nn.MultiheadAttention``.
IN_TAP = "_infgate_in_proj"


class LinearTap(nn.Module):
    """Stands in for an ``aten.linear`` call so a forward hook can see it."""

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


class EmbeddingTap(nn.Module):
    """Stands in for an ``aten.embedding(weight, indices, padding_idx)`` call; the indices
    come first so a hook's ``input[0]`` is the token ids."""

    def __init__(self, padding_idx: int | None) -> None:
        super().__init__()
        self.padding_idx = padding_idx

    def forward(self, indices: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, weight, self.padding_idx)


class LayerNormTap(nn.LayerNorm):
    """Stands in for ``aten.layer_norm(x, shape, weight, bias, eps)`` of a pt2 graph (an
    ``nn.LayerNorm`` without its own parameters, so the norm hooks read its geometry)."""

    def __init__(self, shape: list[int], eps: float) -> None:
        super().__init__(shape, eps=eps, elementwise_affine=False)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


class BatchNormTap(nn.modules.batchnorm._BatchNorm):
    """Stands in for an eval-mode batch norm of a pt2 graph
    (``aten._native_batch_norm_legit_no_training(x, weight, bias, mean, var, momentum,
    eps)[0]``); the norm hooks read the running statistics from the model's buffers."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__(channels, eps=eps, affine=False, track_running_stats=False)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        mean: torch.Tensor,
        var: torch.Tensor,
    ) -> torch.Tensor:
        return F.batch_norm(x, mean, var, weight, bias, training=False, eps=self.eps)


def _plain(mha: nn.MultiheadAttention, need_weights: bool, masks: tuple[Any, ...]) -> bool:
    """Whether scaled-dot-product attention on the projected heads is PyTorch's result."""
    dropout_on = mha.training and mha.dropout > 0
    return (
        not need_weights
        and all(m is None for m in masks)
        and mha.bias_k is None
        and mha.bias_v is None
        and not mha.add_zero_attn
        and not dropout_on
    )


def _tapped_forward(
    self: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not (query is key and key is value and query.dim() == 3 and self._qkv_same_embed_dim):
        return nn.MultiheadAttention.forward(
            self, query, key, value, key_padding_mask, need_weights, attn_mask,
            average_attn_weights, is_causal,
        )  # fmt: skip
    x = query if self.batch_first else query.transpose(0, 1)  # (B, L, E)
    b, length, e = x.shape
    qkv = getattr(self, IN_TAP)(x, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3E)
    weights: torch.Tensor | None = None
    if _plain(self, need_weights, (key_padding_mask, attn_mask)) and not is_causal:
        h = self.num_heads
        q, k, v = (t.reshape(b, length, h, e // h).transpose(1, 2) for t in qkv.chunk(3, -1))
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, e)
    else:
        q, k, v = (t.transpose(0, 1) for t in qkv.chunk(3, -1))  # (L, B, E) each
        eye = torch.eye(e, dtype=x.dtype, device=x.device)
        out, weights = F.multi_head_attention_forward(
            q, k, v, e, self.num_heads, None, None, self.bias_k, self.bias_v,
            self.add_zero_attn, self.dropout, eye, None, training=self.training,
            key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
            use_separate_proj_weight=True, q_proj_weight=eye, k_proj_weight=eye,
            v_proj_weight=eye, average_attn_weights=average_attn_weights, is_causal=is_causal,
        )  # fmt: skip
        attn = out.transpose(0, 1)
    y = self.out_proj(attn)  # a module call on (B, L, E): its hook sees the rows
    return (y if self.batch_first else y.transpose(0, 1)), weights


class TappedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with :func:`_tapped_forward` (set as the class of the
    copies' attention modules, so a tapped model pickles, e.g. to Dask workers)."""

    forward = _tapped_forward  # type: ignore[assignment]


def tap_attention(model: nn.Module) -> tuple[nn.Module, dict[str, LinearTap]] | None:
    """A copy of ``model`` whose packed-projection ``nn.MultiheadAttention`` modules run
    :func:`_tapped_forward`, and ``{attention path: its in-projection tap}``; ``None`` when
    the model has none. Parameter and buffer names are unchanged (``functional_call`` with
    the original's names drives the copy)."""
    paths = [
        p
        for p, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        and m._qkv_same_embed_dim
        and m.in_proj_weight is not None
    ]
    if not paths:
        return None
    tapped = copy.deepcopy(model)
    taps: dict[str, LinearTap] = {}
    for path in paths:
        mha = tapped.get_submodule(path)
        tap = LinearTap()
        mha.add_module(IN_TAP, tap)
        mha.__class__ = TappedMultiheadAttention
        taps[path] = tap
    return tapped, taps
