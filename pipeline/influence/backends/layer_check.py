"""Which hooked layers really give their parameters' per-example gradients.

EK-FAC (and the hooked diagonal blocks of norms and embeddings) rebuild every example's
gradient from a layer's captured input and output gradient. That is only right when the
layer's weights are used nowhere else and its call's rows are the batch's examples. A
model can break either silently: a weight tied to another layer (an output head sharing
the embedding table), a module called twice with different roles, a table looked up with
indices shared by the whole batch (position embeddings on ``arange(L)``), a dense layer on
``(L, B, E)`` rows. So before fitting, :func:`check_hooks` compares, on a few examples, each
layer's hook-derived per-example gradients with autograd's (``torch.func`` on the untouched
model). A layer that disagrees, is never called, or sees rows that are not the batch's gets
the back-end's own diagonal block instead, with the reason in ``details["own_block"]``. A
table looked up with indices shared by the batch may instead share another hooked table's
per-example output gradients (positions added to tokens), when that reproduces autograd's.
"""

from __future__ import annotations

from typing import Any

import torch
from infgate.influence.backends.capture import LayerCapture
from infgate.influence.gradients import GradientEngine
from torch import nn

__all__ = ["check_hooks"]

#: Examples of the first batch the check differentiates (two: a batch-shared tensor cannot
#: pass for a per-example one, and the check stays cheap for any model size).
CHECK_ROWS = 2
#: Relative error allowed between hook-derived and autograd per-example gradients.
TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-3}

SILENT = (
    "its weights are used without calling the module (e.g. MultiheadAttention.out_proj), so "
    "no hook sees its inputs"
)
MISALIGNED = (
    "it is called on a tensor that does not lead with the batch (a table shared by all "
    "examples, e.g. position embeddings on arange(L), or (L, B, E) rows)"
)


def _borrowers(
    cap: LayerCapture,
    layers: list[Any],
    grads: list[list[torch.Tensor]],
    bad: dict[str, str],
    k: int,
) -> dict[str, dict[str, torch.Tensor]]:
    """Shared lookups that may take another table's per-example output gradients.

    A position table looked up once for the whole batch (``pos(arange(L))``) and added to
    the token table's ``(B, L, E)`` output has, per example, exactly the token table's output
    gradient. For each misaligned embedding layer called once, the first hooked embedding
    layer whose output is ``(k, L, E)`` is tried as its donor; the caller keeps the pairing
    only if the gradients it implies equal autograd's. Returns the candidates' implied
    per-example gradients (``{path: {name: ...}}``) and sets their ``donor``.
    """
    out: dict[str, dict[str, torch.Tensor]] = {}
    for i, layer in enumerate(layers):
        if layer.kind != "embedding" or bad.get(layer.path) != MISALIGNED:
            continue
        raws = cap._raw[i]
        if len(raws) != 1:
            continue
        length = raws[0].numel()
        for j, donor in enumerate(layers):
            shape = tuple(cap._outs[j][0].shape) if len(cap._outs[j]) == 1 else ()
            if (
                donor.kind == "embedding"
                and donor.path not in bad
                and donor.donor is None
                and shape == (k, length, layer.out_dim)
            ):
                layer.donor = donor
                ids = layer.shared_activations(raws[0], k)
                out[layer.path] = layer.per_example_grads(ids, grads[j][0])
                del bad[layer.path]
                break
    return out


def check_hooks(
    engine: GradientEngine,
    layers: list[Any],
    model: nn.Module | None,
    start: int,
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[dict[str, str], int]:
    """``({layer path: why its hooks cannot be used}, model output width)`` from the first
    :data:`CHECK_ROWS` examples of a batch."""
    k = min(CHECK_ROWS, x.shape[0])
    xs, ys = x[:k], y[:k]
    bad: dict[str, str] = {}
    hooked: dict[str, dict[str, torch.Tensor]] = {}
    with LayerCapture(engine, layers, start, xs, ys, model=model) as cap:
        n_out = int(cap.output.reshape(cap.output.shape[0], -1).shape[1])
        bad.update({p: SILENT for p in cap.silent})
        bad.update({p: MISALIGNED for p in cap.misaligned if p not in bad})
        live = [(i, layer) for i, layer in enumerate(layers) if layer.path not in bad]
        if live:
            grads = cap.output_grads(engine.objective.loss(cap.output, ys).sum(), check=False)
            for i, layer in live:
                try:
                    hooked[layer.path] = layer.per_example_grads(cap.inputs[i], grads[i][0])
                except RuntimeError as exc:  # shapes that are not (batch, locations, width)
                    bad[layer.path] = f"{MISALIGNED}: {exc}"
            borrowed = _borrowers(cap, layers, grads, bad, k)
            hooked.update(borrowed)
    if not hooked:
        return bad, n_out
    true = engine.unflatten(engine.per_example_grads(start, xs, ys))
    tol = TOLERANCE.get(engine.dtype, 1e-2)
    for path, parts in hooked.items():
        for name, got in parts.items():
            want = true[name].reshape(k, -1).double()
            got = got.reshape(k, -1).double()
            scale = float(torch.linalg.vector_norm(want))
            err = float(torch.linalg.vector_norm(got - want))
            if not err <= tol * scale and not (scale == 0.0 and err == 0.0):
                rel = err / scale if scale > 0 else float("inf")
                if path in borrowed:  # no table's output gradients are this lookup's
                    next(ly for ly in layers if ly.path == path).donor = None
                    bad[path] = MISALIGNED
                    break
                bad[path] = (
                    f"its hook-derived per-example gradient of {name} differs from autograd's "
                    f"(relative error {rel:.1e}): its weights are also used outside this call "
                    f"(tied or shared weights) or its rows are not the batch's examples"
                )
                break
    return bad, n_out
