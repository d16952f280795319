"""Capturing hooked layers' inputs and output gradients in one forward / backward pass.

:class:`LayerCapture` forwards a batch with forward hooks on the EK-FAC layers (modules, or
taps in a copy of a pt2 graph or of a model with attention), keeps each layer's raw inputs
and outputs, and then answers output gradients for any weighting of the model's outputs:
one backward pass (:meth:`LayerCapture.output_grads`) or ``K`` at once as one vmapped pass
(:meth:`LayerCapture.output_grads_many`).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch
from infgate.errors import NonFiniteError
from infgate.influence.gradients import GradientEngine, model_logits
from torch import nn
from torch.func import functional_call
from torch.utils.hooks import RemovableHandle

__all__ = ["MAX_BATCHED_FLOATS", "LayerCapture"]

#: Floats of output gradients one vmapped backward pass may hold (``K`` copies at once).
MAX_BATCHED_FLOATS = 1 << 26


def _join(parts: list[torch.Tensor]) -> torch.Tensor:
    """A layer's calls joined along the locations (no copy for the usual single call)."""
    if not parts:
        return torch.empty(0)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class LayerCapture:
    """Forward a batch with hooks on the covered layers; then ask for output gradients.

    Use as a context manager: hooks are removed on exit even if scoring fails.
    """

    def __init__(
        self,
        engine: GradientEngine,
        layers: list[Any],  # KronLayer, NormLayer or EmbeddingLayer (one interface)
        start: int,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        model: nn.Module | None = None,
    ) -> None:
        self.engine, self.layers, self.start = engine, layers, start
        self.model = model  # a tapped copy of a pt2 GraphModule, else the engine's model
        self.x, self.targets = x, y
        self._raw: list[list[torch.Tensor]] = [[] for _ in layers]
        self._outs: list[list[torch.Tensor]] = [[] for _ in layers]
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> LayerCapture:
        for i, layer in enumerate(self.layers):

            def hook(_m: nn.Module, inp: tuple[Any, ...], out: torch.Tensor, i: int = i) -> None:
                self._raw[i].append(inp[0].detach())
                self._outs[i].append(out)

            self._handles.append(layer.module.register_forward_hook(hook))
        eng = self.engine
        params = {n: p.detach().requires_grad_(True) for n, p in eng.params.items()}
        with torch.enable_grad():
            if self.model is None:
                self.output = eng.forward(params, self.x)
            else:
                self.output = model_logits(
                    functional_call(self.model, {**eng.fixed, **params}, (self.x,)),
                    binary=eng.objective.name == "cross_entropy",
                )
        eng.objective.check_targets(self.output, self.targets)
        finite = torch.isfinite(self.output.reshape(self.output.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            rows = (torch.nonzero(~finite).flatten()[:5] + self.start).tolist()
            raise NonFiniteError(f"model outputs are NaN or inf for example(s) {rows}")
        #: layers whose hook never fired (the forward uses their weights without calling them)
        self.silent = [
            layer.path for layer, raws in zip(self.layers, self._raw, strict=True) if not raws
        ]
        b = self.x.shape[0]
        #: layers whose call's rows are not this batch's examples (shared positions)
        self.misaligned: list[str] = []
        self.inputs = []
        for layer, raws in zip(self.layers, self._raw, strict=True):
            try:
                if getattr(layer, "donor", None) is not None:
                    acts = [layer.shared_activations(r, b) for r in raws]
                else:
                    acts = [layer.activations(r) for r in raws]
            except RuntimeError:
                acts = []
                self.misaligned.append(layer.path)
            if any(a.shape[0] != b for a in acts):
                self.misaligned.append(layer.path)
                acts = []
            self.inputs.append(_join(acts))
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def output_grads_many(self, target: torch.Tensor, grad_outputs: torch.Tensor) -> list[Any]:
        """``[output_grads(target, grad_outputs[k], check=False) for k]`` from vmapped backward
        passes (``is_grads_batched``; ``grad_outputs`` is ``(K, *target.shape)``), chunked so
        ``K`` copies of the layers' output gradients stay under ``MAX_BATCHED_FLOATS``. A
        model with an op autograd cannot vmap falls back to one pass per row."""
        flat = [o for outs in self._outs for o in outs]
        per_copy = max(1, sum(o.numel() for o in flat))
        step = max(1, MAX_BATCHED_FLOATS // per_copy)
        rows: list[Any] = []
        k = grad_outputs.shape[0]
        for lo in range(0, k, step):
            chunk = grad_outputs[lo : lo + step]
            try:
                grads = torch.autograd.grad(
                    target, flat, grad_outputs=chunk, retain_graph=True, allow_unused=True,
                    is_grads_batched=True,
                )  # fmt: skip
            except RuntimeError:
                rows += [self.output_grads(target, g, check=False) for g in chunk]
                continue
            for j in range(chunk.shape[0]):
                res, i = [], 0
                for layer, outs in zip(self.layers, self._outs, strict=True):
                    parts = []
                    for o in outs:
                        g = grads[i][j] if grads[i] is not None else torch.zeros_like(o)
                        parts.append(layer.output_rows(g.detach()))
                        i += 1
                    res.append([_join(parts)])
                rows.append(self._borrow(res))
        return rows

    def _borrow(self, res: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        """Layers with a ``donor`` take its per-example output gradients (shared lookups)."""
        for i, layer in enumerate(self.layers):
            donor = getattr(layer, "donor", None)
            if donor is not None:
                res[i] = res[next(j for j, d in enumerate(self.layers) if d is donor)]
        return res

    def output_grads(
        self, target: torch.Tensor, grad_outputs: torch.Tensor | None = None, *, check: bool = True
    ) -> list[list[torch.Tensor]]:
        """Per layer, ``[(B, T, O)]`` gradients of ``target`` (weighted by ``grad_outputs``);
        ``check=False`` skips the per-layer NaN/inf scan (the caller checks its result)."""
        flat = [o for outs in self._outs for o in outs]
        grads = torch.autograd.grad(
            target, flat, grad_outputs=grad_outputs, retain_graph=True, allow_unused=True
        )
        res: list[list[torch.Tensor]] = []
        i = 0
        for layer, outs in zip(self.layers, self._outs, strict=True):
            rows = []
            for o in outs:
                g = grads[i] if grads[i] is not None else torch.zeros_like(o)
                rows.append(layer.output_rows(g.detach()))
                i += 1
            if not rows:  # a layer the forward never called (the hook check drops it)
                res.append([torch.empty(0)])
                continue
            cat = _join(rows)
            if check and not bool(torch.isfinite(cat).all()):
                raise NonFiniteError(
                    f"output gradients of layer {layer.path} are NaN or inf in examples "
                    f"{self.start}..{self.start + cat.shape[0] - 1}"
                )
            res.append([cat])
        return self._borrow(res)
