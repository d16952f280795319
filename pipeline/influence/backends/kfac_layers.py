"""Per-layer pieces of K-FAC / EK-FAC: finding layers, capturing their inputs and output
gradients with hooks, and the Kronecker-factored statistics of one layer.

A captured layer is seen as a matrix product at ``T`` locations: inputs ``a`` of shape
``(B, T, I)`` (a column of ones appended when the bias is selected) and output gradients
``ds`` of shape ``(B, T, O)``; the per-example gradient of the ``(O, I)`` weight-and-bias
matrix is ``ds_b^T a_b``. Dense layers on ``(B, ..., in)`` inputs use every leading position
as a location; convolutions unfold their input into patches (``F.unfold``), one location per
output pixel (Grosse & Martens 2016).

A dense layer's position whose output gradient is zero for every sampled output of an
example (a padded token masked out of attention and pooling, a position nothing reads)
adds nothing to that example's gradient, so it is left out of the input factor ``A`` and
of the location count: the factors, and the scores, do not depend on how far sequences are
padded (Kronfluence excludes padding the same way, from the attention mask).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from infgate.errors import CurvatureError, NonFiniteError
from infgate.influence.backends.layer_plan import LayerSpec

__all__ = ["KronLayer"]


class KronLayer:
    """Kronecker factors, eigenbases and (refitted) eigenvalues of one layer."""

    def __init__(self, spec: LayerSpec) -> None:
        self.spec = spec
        self.path = spec.path
        self.module = spec.module
        self.weight = spec.weight
        self.bias = spec.bias
        self.kind = spec.kind
        self.out_dim, self.in_dim = spec.out_dim, spec.in_dim
        self.in_aug = (self.in_dim if self.weight else 0) + (1 if self.bias else 0)
        self.n_params = self.out_dim * self.in_aug
        self.a_sum: torch.Tensor | None = None
        self.s_sum: torch.Tensor | None = None
        self.locations: float = 1.0
        self.live_sum = 0.0
        self.rows_seen = 0
        self.eig_sum: torch.Tensor | None = None
        self.eigenvalues = torch.empty(0)
        self.shapes: dict[str, torch.Size] = {}

    # -- shapes ----------------------------------------------------------------------------
    def activations(self, raw: torch.Tensor) -> torch.Tensor:
        """``(B, T, in_aug)`` layer inputs from the module's raw input."""
        sp = self.spec
        if self.kind in ("conv1d", "conv2d"):
            img = raw.unsqueeze(2) if self.kind == "conv1d" else raw  # (B, C, L) -> (B, C, 1, L)
            a = F.unfold(
                img, sp.kernel_size, dilation=sp.dilation, padding=sp.padding, stride=sp.stride
            ).transpose(1, 2)
        else:
            a = self._batch_first(raw, self.in_dim)
        parts = [a] if self.weight else []
        if self.bias:
            parts.append(torch.ones(*a.shape[:2], 1, dtype=a.dtype, device=a.device))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    def _batch_first(self, t: torch.Tensor, width: int) -> torch.Tensor:
        """``(B, T, width)`` rows of a dense call's input or output (see ``seq_major``)."""
        sm = self.spec.seq_major
        if sm is None:
            return t.reshape(t.shape[0], -1, width)
        seq, dim = sm
        if dim == 1:  # (L, B, width)
            return t.transpose(0, 1).reshape(t.shape[1], -1, width)
        return t.reshape(seq, -1, width).transpose(0, 1)  # (L * B, width), sequence-major

    def output_rows(self, g: torch.Tensor) -> torch.Tensor:
        """``(B, T, O)`` output gradients from the gradient w.r.t. the module's output."""
        if self.kind in ("conv1d", "conv2d"):
            return g.flatten(2).transpose(1, 2)
        return self._batch_first(g, self.out_dim)

    def per_example_grads(self, acts: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: (B, numel)}`` per-example gradients ``ds^T a`` (for checks on a few rows)."""
        full = torch.bmm(g.transpose(1, 2).double(), acts.double())  # (B, O, I_aug)
        out: dict[str, torch.Tensor] = {}
        if self.weight:
            out[self.weight] = full[:, :, : self.in_dim].reshape(full.shape[0], -1)
        if self.bias:
            out[self.bias] = full[:, :, -1]
        return out

    # -- fitting ---------------------------------------------------------------------------
    def accumulate_factors(self, acts: torch.Tensor, grads: list[torch.Tensor]) -> None:
        a = acts
        live = float(acts.shape[0] * acts.shape[1])
        if acts.shape[1] > 1 and self.kind not in ("conv1d", "conv2d") and grads:
            reached = torch.stack([g.abs().amax(-1) for g in grads]).amax(0) > 0  # (B, T)
            live = float(reached.sum())
            if live < reached.numel():  # some position unread: leave it out of A
                a = acts * reached.unsqueeze(-1).to(acts.dtype)
        a = a.reshape(-1, self.in_aug).double()
        self.a_sum = a.T @ a + (0 if self.a_sum is None else self.a_sum)
        s = self.s_sum if self.s_sum is not None else 0
        for g in grads:
            g2 = g.reshape(-1, self.out_dim).double()
            s = s + g2.T @ g2
        assert isinstance(s, torch.Tensor)
        self.s_sum = s
        self.live_sum += live
        self.rows_seen += acts.shape[0]
        self.locations = max(1.0, self.live_sum / max(self.rows_seen, 1))

    def eigendecompose(self, n: int) -> None:
        if self.a_sum is None or self.s_sum is None:
            raise CurvatureError(f"layer {self.path} was never called in the model's forward")
        a, s = self.a_sum / n, self.s_sum / n
        if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(s).all())):
            raise NonFiniteError(f"Kronecker factors of layer {self.path} are NaN or inf")
        self.la, self.qa = torch.linalg.eigh(0.5 * (a + a.T))
        self.ls, self.qs = torch.linalg.eigh(0.5 * (s + s.T))
        self.a_sum = self.s_sum = None

    def _rotated(
        self, acts: torch.Tensor, g: torch.Tensor, qa: torch.Tensor, qs: torch.Tensor
    ) -> torch.Tensor:
        """``(B, O, I)`` per-example gradients in the eigenbasis, ``Q_S^T (ds^T a) Q_A``."""
        ra = acts.to(qa.dtype) @ qa
        rg = g.to(qs.dtype) @ qs
        return torch.bmm(rg.transpose(1, 2), ra)

    def accumulate_eigenvalues(self, acts: torch.Tensor, grads: list[torch.Tensor]) -> None:
        total = self.eig_sum if self.eig_sum is not None else 0
        if acts.shape[1] == 1:  # dense layer: the rotated gradient is an outer product
            ra = (acts[:, 0].double() @ self.qa).pow(2)
            for g in grads:
                rg = (g[:, 0].double() @ self.qs).pow(2)
                total = total + rg.T @ ra
        else:  # rotations in the model's dtype, squares summed in float64
            qa, qs = self.qa.to(acts.dtype), self.qs.to(acts.dtype)
            k = len(grads)
            # the inputs are rotated once for all K gradient rows, and the K products run as
            # one (B, K*O, T) @ (B, T, I) batch
            step = max(1, (1 << 25) // max(k * self.n_params, 1))
            for i in range(0, acts.shape[0], step):
                ra = acts[i : i + step] @ qa  # (b, T, I)
                rg = torch.stack([g[i : i + step] for g in grads], 1) @ qs  # (b, K, T, O)
                b, t = ra.shape[0], ra.shape[1]
                rot = torch.bmm(rg.transpose(2, 3).reshape(b, k * self.out_dim, t), ra)
                total = total + rot.pow(2).reshape(b * k, self.out_dim, -1).sum(0).double()
        assert isinstance(total, torch.Tensor)
        self.eig_sum = total

    def finish_eigenvalues(self, n: int, *, refit: bool) -> None:
        if refit:
            assert self.eig_sum is not None
            self.eigenvalues = self.eig_sum / n
        else:
            self.eigenvalues = torch.outer(self.ls, self.la).clamp_min(0) / self.locations
        self.eig_sum = None

    def set_damping(self, damping: float, dtype: torch.dtype) -> None:
        self.inv = 1.0 / (self.eigenvalues + damping)
        self.qa_s, self.qs_s, self.inv_s = self.qa.to(dtype), self.qs.to(dtype), self.inv.to(dtype)

    # -- scoring ---------------------------------------------------------------------------
    def self_scores(self, acts: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``(B,)`` float64 ``sum_jk (Q_S^T G Q_A)_jk^2 / (Lambda_jk + lambda)``."""
        if acts.shape[1] == 1:
            ra = (acts[:, 0] @ self.qa_s).pow(2)
            rg = (g[:, 0] @ self.qs_s).pow(2)
            return ((rg @ self.inv_s) * ra).sum(1).double()
        r = self._rotated(acts, g, self.qa_s, self.qs_s)
        return (r.pow(2) * self.inv_s).sum((1, 2)).double()

    def bind_shapes(self, shapes: dict[str, torch.Size]) -> None:
        self.shapes = shapes

    def _matrix(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        b = next(iter(parts.values())).shape[0]
        cols = []
        if self.weight:
            cols.append(parts[self.weight].reshape(b, self.out_dim, self.in_dim))
        if self.bias:
            cols.append(parts[self.bias].reshape(b, self.out_dim, 1))
        return torch.cat(cols, dim=2).double()

    def quadratic_flat(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        r = self.qs.T @ self._matrix(parts) @ self.qa
        return (r.pow(2) * self.inv).sum((1, 2))

    def solve_flat(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        r = self.qs.T @ self._matrix(parts) @ self.qa
        back = self.qs @ (r * self.inv) @ self.qa.T
        b = back.shape[0]
        out: dict[str, torch.Tensor] = {}
        if self.weight:
            out[self.weight] = back[:, :, : self.in_dim].reshape(b, -1)
        if self.bias:
            out[self.bias] = back[:, :, -1].reshape(b, -1)
        return out

    def filter_flat(
        self, parts: dict[str, torch.Tensor], lam: float, lam_f: float
    ) -> dict[str, torch.Tensor]:
        """``(H + lambda' I)^{-1} (H + lambda I)`` on this layer's block, in its eigenbasis."""
        r = self.qs.T @ self._matrix(parts) @ self.qa
        back = self.qs @ (r * (self.eigenvalues + lam) / (self.eigenvalues + lam_f)) @ self.qa.T
        b = back.shape[0]
        out: dict[str, torch.Tensor] = {}
        if self.weight:
            out[self.weight] = back[:, :, : self.in_dim].reshape(b, -1)
        if self.bias:
            out[self.bias] = back[:, :, -1].reshape(b, -1)
        return out

    def leverage(
        self, acts: torch.Tensor, g: torch.Tensor, r: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This layer's ``(M (B,C,C), ||g||^2, ||A^{-1} g||^2)`` from the captured inputs
        ``acts`` ``(B, T, I)``, per-output gradients ``g`` ``(B, C, T, O)`` and residuals
        ``r`` ``(B, C)``: in the eigenbasis ``A^{-1}`` is the diagonal ``inv``, so
        ``M_cd = sum_jk R_c R_d inv`` with ``R_c = Q_S^T G_c Q_A`` (rotations applied to the
        factors before the product, never to a formed gradient)."""
        ra = acts.to(self.qa_s.dtype) @ self.qa_s  # (B, T, I)
        rg = g.to(self.qs_s.dtype) @ self.qs_s  # (B, C, T, O)
        rd = r.to(torch.float64)
        inv = self.inv
        if acts.shape[1] == 1:  # dense: R_c = rg_c ra^T, an outer product
            ra0, rg0 = ra[:, 0].double(), rg[:, :, 0].double()
            a2 = ra0.pow(2)
            w = a2 @ inv.T  # (B, O): sum_k inv_jk ra_k^2
            lev = torch.einsum("bco,bdo,bo->bcd", rg0, rg0, w)
            gr = torch.einsum("bc,bco->bo", rd, rg0)
            g2 = gr.pow(2).sum(1) * a2.sum(1)
            s2 = ((gr.pow(2) @ inv.pow(2)) * a2).sum(1)
            return lev, g2, s2
        t = acts.shape[1]
        c = r.shape[1]
        # Two exact ways; take the one with fewer flops per example: form R_c (C T O I plus
        # C^2 O I for the products) or go through the location Gram W_tt'j (T^2 O I + T^2 C^2 O).
        if t * t * (self.in_aug + c * c) < c * self.in_aug * (t + c):
            return self._leverage_gram(ra, rg, r)
        return self._leverage_rotated(ra, rg, r)

    def _leverage_rotated(
        self, ra: torch.Tensor, rg: torch.Tensor, r: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, c = r.shape
        lev = torch.zeros(b, c, c, dtype=torch.float64, device=r.device)
        g2 = torch.zeros(b, dtype=torch.float64, device=r.device)
        s2 = torch.zeros_like(g2)
        root = self.inv_s.sqrt().reshape(-1)
        inv = self.inv.reshape(-1)
        step = max(1, (1 << 25) // max(c * self.n_params, 1))
        for i in range(0, b, step):
            sl = slice(i, i + step)
            k = ra[sl].shape[0]
            # R_c = rg_c^T ra: (k, C*O, T) @ (k, T, I) -> (k, C, O*I)
            big_r = torch.bmm(
                rg[sl].transpose(2, 3).reshape(k, c * self.out_dim, -1), ra[sl]
            ).reshape(k, c, -1)
            z = big_r * root
            lev[sl] = torch.bmm(z, z.transpose(1, 2)).double()
            rr = torch.bmm(r[sl].to(big_r.dtype).unsqueeze(1), big_r).squeeze(1).double()
            g2[sl] = rr.pow(2).sum(1)
            s2[sl] = (rr * inv).pow(2).sum(1)
        return lev, g2, s2

    def _leverage_gram(
        self, ra: torch.Tensor, rg: torch.Tensor, r: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``M_cd = sum_tt'j rg_ctj rg_dt'j W_tt'j`` with ``W_tt'j = sum_k inv_jk ra_tk ra_t'k``:
        never forms the ``(C, O, I)`` rotated gradients (for layers with few locations)."""
        b, c = r.shape
        t, o = ra.shape[1], self.out_dim
        inv_t = self.inv_s.T.contiguous()  # (I, O)
        inv2_t = self.inv.pow(2).T.to(ra.dtype).contiguous()
        lev = torch.empty(b, c, c, dtype=torch.float64, device=r.device)
        g2 = torch.empty(b, dtype=torch.float64, device=r.device)
        s2 = torch.empty_like(g2)
        step = max(1, (1 << 25) // max(t * t * max(self.in_aug, o * c), 1))
        for i in range(0, b, step):
            sl = slice(i, i + step)
            a, gg = ra[sl], rg[sl]
            k = a.shape[0]
            pairs = (a.unsqueeze(2) * a.unsqueeze(1)).reshape(-1, self.in_aug)  # (k T T, I)
            w = (pairs @ inv_t).reshape(k, t, t, o)
            y = torch.einsum("bctj,btsj->bcsj", gg, w)
            lev[sl] = torch.bmm(y.reshape(k, c, -1), gg.reshape(k, c, -1).transpose(1, 2)).double()
            gr = torch.einsum("bc,bctj->btj", r[sl].to(gg.dtype), gg)  # rotated output grads of g
            ga = torch.bmm(a, a.transpose(1, 2))  # (k, T, T)
            g2[sl] = (torch.bmm(gr, gr.transpose(1, 2)) * ga).sum((1, 2)).double()
            w2 = (pairs @ inv2_t).reshape(k, t, t, o)
            s2[sl] = torch.einsum("btj,bsj,btsj->b", gr, gr, w2).double()
        return lev, g2, s2

    def describe(self) -> dict[str, Any]:
        ev = self.eigenvalues
        return {
            "layer": self.path,
            "kind": self.kind,
            "params": [n for n in (self.weight, self.bias) if n],
            "shape": [self.out_dim, self.in_aug],
            "top_eigenvalue": float(ev.max()) if ev.numel() else None,
        }
