"""Diagonal curvature of embedding tables, from forward hooks.

An ``nn.Embedding`` (or an ``aten.embedding`` call in a pt2 graph) returns row ``W[v_t]``
at every location ``t`` of an example, so example b's gradient of row ``v`` is the sum of
the output gradients at the locations holding token ``v``:
``dW_bv = sum_{t: v_bt = v} ds_bt`` (zero for ``padding_idx``). It comes from the captured
token ids and the batched output gradient, like EK-FAC's factors, without a per-example
backward pass. Only the rows an example touches are formed (one ``(U, E)`` scatter over the
distinct (example, token) pairs of a batch), so a 30k-token vocabulary costs what its used
rows cost. The block's curvature is its Gauss-Newton diagonal, exact per coordinate,
``(H + lambda I)^{-1} = diag(1 / (d + lambda))``: the same block the parameters would get as
EK-FAC's own diagonal block (:mod:`~infgate.influence.backends.diagonal`), at hook cost. It
follows :class:`~infgate.influence.backends.kfac_layers.KronLayer`'s interface.
"""

from __future__ import annotations

from typing import Any

import torch
from infgate.influence.backends.layer_plan import LayerSpec

__all__ = ["EmbeddingLayer"]


class EmbeddingLayer:
    """One embedding table ``(V, E)``, diagonal curvature, per-example rows by scatter."""

    def __init__(self, spec: LayerSpec) -> None:
        self.spec = spec
        self.path, self.module = spec.path, spec.module
        self.weight, self.bias = spec.weight, None
        self.kind = "embedding"
        self.vocab, self.out_dim = spec.in_dim, spec.out_dim
        self.n_params = self.vocab * self.out_dim
        pad = getattr(spec.module, "padding_idx", None)
        self.padding_idx = None if pad is None or int(pad) < 0 else int(pad)
        self.diag_sum: torch.Tensor | None = None
        self.eigenvalues = torch.empty(0)
        #: for a table looked up with indices shared by the whole batch (positions on
        #: ``arange(L)``) whose output is added to another table's: that table's layer, whose
        #: per-example output gradients are this one's too (set by the hook check only when
        #: they reproduce autograd's per-example gradients)
        self.donor: Any = None

    # -- layout ----------------------------------------------------------------------------
    def activations(self, raw: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` int64 token ids (the hooked call's index input)."""
        return raw.reshape(raw.shape[0], -1).long()

    def shared_activations(self, raw: torch.Tensor, batch: int) -> torch.Tensor:
        """``(B, T)`` ids of a lookup shared by every example of the batch."""
        return raw.reshape(1, -1).long().expand(batch, -1)

    def output_rows(self, g: torch.Tensor) -> torch.Tensor:
        return g.reshape(g.shape[0], -1, self.out_dim)

    def _rows(
        self, ids: torch.Tensor, g: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per distinct (example, token) pair: ``(example (U,), token (U,), dW row (U, *, E))``
        from ids ``(B, T)`` and output gradients ``(B, T, *, E)``."""
        b, t = ids.shape
        keys = (torch.arange(b, device=ids.device).unsqueeze(1) * self.vocab + ids).reshape(-1)
        flat = g.reshape(b * t, *g.shape[2:])
        if self.padding_idx is not None:
            keep = ids.reshape(-1) != self.padding_idx
            keys, flat = keys[keep], flat[keep]
        uniq, inverse = torch.unique(keys, return_inverse=True)
        rows = torch.zeros(len(uniq), *flat.shape[1:], dtype=flat.dtype, device=flat.device)
        rows.index_add_(0, inverse, flat)
        return uniq // self.vocab, uniq % self.vocab, rows

    def per_example_grads(self, acts: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense ``(B, V, E)`` gradients (for checks on a few rows only)."""
        assert self.weight is not None
        ex, tok, rows = self._rows(acts, g)
        out = torch.zeros(
            acts.shape[0], self.vocab, self.out_dim, dtype=rows.dtype, device=rows.device
        )
        out[ex, tok] = rows
        return {self.weight: out.reshape(acts.shape[0], -1).double()}

    # -- fitting (the KronLayer interface) ---------------------------------------------------
    def accumulate_factors(self, acts: torch.Tensor, grads: list[torch.Tensor]) -> None:
        total = (
            self.diag_sum
            if self.diag_sum is not None
            else torch.zeros(self.vocab, self.out_dim, dtype=torch.float64, device=acts.device)
        )
        for g in grads:
            _, tok, rows = self._rows(acts, g)
            total.index_add_(0, tok, rows.double().pow(2))
        self.diag_sum = total

    def eigendecompose(self, n: int) -> None:
        assert self.diag_sum is not None
        self.eigenvalues = (self.diag_sum / n).reshape(-1)
        self.diag_sum = None

    def accumulate_eigenvalues(self, acts: torch.Tensor, grads: list[torch.Tensor]) -> None:
        return None  # the diagonal is already exact per coordinate

    def finish_eigenvalues(self, n: int, *, refit: bool) -> None:
        return None

    def set_damping(self, damping: float, dtype: torch.dtype) -> None:
        self.inv = 1.0 / (self.eigenvalues + damping)
        self.inv_rows = self.inv.reshape(self.vocab, self.out_dim)

    def bind_shapes(self, shapes: dict[str, torch.Size]) -> None:
        return None

    # -- queries ---------------------------------------------------------------------------
    def self_scores(self, acts: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        ex, tok, rows = self._rows(acts, g)
        per_row = (rows.double().pow(2) * self.inv_rows[tok]).sum(1)
        out = torch.zeros(acts.shape[0], dtype=torch.float64, device=acts.device)
        return out.index_add_(0, ex, per_row)

    def _flat(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        assert self.weight is not None
        return parts[self.weight].double().reshape(parts[self.weight].shape[0], -1)

    def quadratic_flat(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self._flat(parts).pow(2) * self.inv).sum(1)

    def solve_flat(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        assert self.weight is not None
        return {self.weight: self._flat(parts) * self.inv}

    def filter_flat(
        self, parts: dict[str, torch.Tensor], lam: float, lam_f: float
    ) -> dict[str, torch.Tensor]:
        assert self.weight is not None
        d = self.eigenvalues
        return {self.weight: self._flat(parts) * (d + lam) / (d + lam_f)}

    def leverage(
        self, acts: torch.Tensor, g: torch.Tensor, r: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(M, ||g||^2, ||A^{-1} g||^2)`` of this block; ``g`` is ``(B, C, T, E)``."""
        b, c = r.shape
        ex, tok, rows = self._rows(acts, g.transpose(1, 2))  # rows (U, C, E)
        rows = rows.double()
        inv = self.inv_rows[tok]  # (U, E)
        lev = torch.zeros(b, c, c, dtype=torch.float64, device=r.device)
        lev.index_add_(0, ex, torch.einsum("uce,ude,ue->ucd", rows, rows, inv))
        gr = torch.einsum("uc,uce->ue", r.double()[ex], rows)  # rows of the residual's gradient
        g2 = torch.zeros(b, dtype=torch.float64, device=r.device)
        s2 = torch.zeros_like(g2)
        g2.index_add_(0, ex, gr.pow(2).sum(1))
        s2.index_add_(0, ex, (gr * inv).pow(2).sum(1))
        return lev, g2, s2

    def describe(self) -> dict[str, Any]:
        ev = self.eigenvalues
        return {
            "layer": self.path,
            "kind": "embedding (diagonal)",
            "params": [self.weight],
            "shape": [self.vocab, self.out_dim],
            "top_eigenvalue": float(ev.max()) if ev.numel() else None,
        }
