"""The own diagonal block of EK-FAC: parameters no Kronecker factor covers.

For the parameters that :mod:`~infgate.influence.backends.layer_plan` routes here (norm
scales in a pt2 graph, position tables shared by the batch, tied weights, cross-attention...
``d_p = E_i[sum_k (A_i J_i)_{kp}^2]`` (the Gauss-Newton diagonal of the mean loss; the
true-Fisher diagonal for softmax cross-entropy), so ``(H + lambda I)^{-1}`` on the block is
``diag(1 / (d + lambda))``. It is exact per coordinate and ignores cross terms, the same
trade EK-FAC makes between layers.
"""

from __future__ import annotations

import torch
from infgate.influence.gradients import GradientEngine

__all__ = ["DiagonalBlock"]

#: Rows of per-example Jacobians kept at once (bounds memory for large blocks).
MAX_JACOBIAN_FLOATS = 1 << 25


class DiagonalBlock:
    """Diagonal curvature for the parameters ``names`` of ``engine``'s model."""

    def __init__(self, engine: GradientEngine, names: list[str]) -> None:
        self.names = list(names)
        self.engine = GradientEngine(
            engine.model, engine.objective, params=self.names, device=engine.device,
            dtype=engine.dtype,
        )  # fmt: skip
        self.n_params = self.engine.n_params
        self.diag_sum = torch.zeros(self.n_params, dtype=torch.float64, device=engine.device)
        self.diag = self.diag_sum
        self.inv = self.diag_sum

    def _chunks(self, x: torch.Tensor, per_row: int) -> list[slice]:
        step = max(1, MAX_JACOBIAN_FLOATS // max(per_row, 1))
        return [slice(i, i + step) for i in range(0, x.shape[0], step)]

    def accumulate(
        self, start: int, x: torch.Tensor, y: torch.Tensor, fisher: str, gen: torch.Generator
    ) -> None:
        """Add one batch's contribution to the diagonal (``fisher`` as in EK-FAC)."""
        eng = self.engine
        if fisher == "expected":
            for sl in self._chunks(x, 32 * self.n_params):
                u = eng.factor_grads(start, x[sl], y[sl])  # (b, K, P_own), model dtype
                # squares in the model's dtype, summed in float64 (no float64 copy of u)
                self.diag_sum += u.pow(2).sum((0, 1), dtype=torch.float64)
            return
        if fisher == "sampled":
            with torch.no_grad():
                p = torch.softmax(eng.outputs(x).double(), dim=1).cpu()
            y = torch.multinomial(p, 1, generator=gen).squeeze(1).to(y.device)
        self.diag_sum += eng.per_example_grads(start, x, y).pow(2).sum(0, dtype=torch.float64)

    def finish(self, n: int) -> None:
        self.diag = self.diag_sum / n

    def set_damping(self, damping: float) -> None:
        self.inv = 1.0 / (self.diag + damping)

    # -- queries ---------------------------------------------------------------------------
    def self_scores(self, start: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g = self.engine.per_example_grads(start, x, y).double()
        return (g.pow(2) * self.inv).sum(1)

    def quadratic_flat(self, g: torch.Tensor) -> torch.Tensor:
        return (g.double().pow(2) * self.inv).sum(1)

    def solve_flat(self, g: torch.Tensor) -> torch.Tensor:
        return g.double() * self.inv

    def leverage(
        self, x: torch.Tensor, r: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(M (B,C,C), ||g||^2 (B,), ||A^{-1} g||^2 (B,))`` of this block for residuals ``r``."""
        b, c = r.shape
        lev = torch.zeros(b, c, c, dtype=torch.float64, device=r.device)
        g2 = torch.zeros(b, dtype=torch.float64, device=r.device)
        s2 = torch.zeros_like(g2)
        root = self.inv.sqrt()
        for sl in self._chunks(x, c * self.n_params):
            # Products in the model's dtype, results in float64: the precision policy of the
            # Kronecker layers' leverage (no float64 copy of the (b, C, P_own) Jacobian).
            jac = self.engine.output_jacobians(x[sl])  # (b, C, P_own)
            z = jac * root.to(jac.dtype)
            lev[sl] = torch.bmm(z, z.transpose(1, 2)).double()
            g = torch.bmm(r[sl].to(jac.dtype).unsqueeze(1), jac).squeeze(1).double()
            g2[sl] = g.pow(2).sum(1)
            s2[sl] = (g * self.inv).pow(2).sum(1)
        return lev, g2, s2

    def filter(self, theta: torch.Tensor, lam: float, lam_f: float) -> torch.Tensor:
        """``(d + lambda) / (d + lambda') theta`` on this block."""
        return theta * (self.diag + lam) / (self.diag + lam_f)

    def describe(self, reasons: dict[str, str]) -> list[dict[str, object]]:
        sizes = dict(zip(self.engine.names, self.engine.sizes, strict=True))
        return [{"param": n, "size": sizes[n], "reason": reasons.get(n, "")} for n in self.names]
