"""Per-example gradients and curvature pieces with ``torch.func``.

The model is called functionally (``functional_call``) with the selected parameters as
the differentiated arguments and everything else (other parameters, buffers) held fixed, so
the caller's module is never mutated. This works for any ``nn.Module``, including the
``GraphModule`` that MLflow's ``pt2`` flavour returns.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from infgate.errors import InvalidInputError, ModelStateError, NonFiniteError
from infgate.influence.objective import Objective
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "GradientEngine",
    "ParamSelector",
    "forward_mode_kernels",
    "model_logits",
    "resolve_device",
]

ParamSelector = Sequence[str] | Sequence[nn.Module] | nn.Module | None

_STOCHASTIC = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def _vmappable_attention() -> contextlib.AbstractContextManager[None]:
    """Scaled-dot-product attention through its math kernel: the fused CPU/flash kernels
    have no vmap batching rule, so per-example passes would fall back to a Python loop."""
    return sdpa_kernel(SDPBackend.MATH)


@contextlib.contextmanager
def forward_mode_kernels() -> Iterator[None]:
    """Kernels with forward-mode (``jvp``) rules, for the span of a forward-mode pass.

    Several fused kernels have a reverse-mode rule only: the transformer encoder's fast
    path, the flash/memory-efficient attention kernels, and oneDNN's CPU LSTM kernel
    (``mkldnn_rnn_layer``). Inside this context the encoder takes its plain path,
    attention its math kernel and recurrent layers the native kernel; both switches are
    restored on exit."""
    # (mkldnn.flags() would also reset the caller's deterministic/TF32 settings and warn)
    fast, onednn = torch.backends.mha.get_fastpath_enabled(), torch.backends.mkldnn.enabled
    torch.backends.mha.set_fastpath_enabled(False)
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        torch.backends.mkldnn.enabled = onednn  # type: ignore[assignment]


_SHAPE_OPS = frozenset(
    {"view", "reshape", "squeeze", "unsqueeze", "flatten", "contiguous", "clone", "alias"}
)


def _sigmoid_node(node: Any) -> bool:
    """Whether an fx node computes a sigmoid, looking back through shape-only ops."""
    for _ in range(8):
        if not isinstance(node, torch.fx.Node):
            return False
        target = node.target
        name = getattr(target, "__name__", str(target)).split(".")[0]
        if node.op == "call_module":
            owner = node.graph.owning_module
            sub = owner.get_submodule(str(target)) if owner is not None else None
            return isinstance(sub, nn.Sigmoid)
        if name == "sigmoid" or target in (torch.sigmoid, torch.nn.functional.sigmoid):
            return True
        if name not in _SHAPE_OPS or not node.args:
            return False
        node = node.args[0]
    return False


_SIGMOID_SEEN: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def final_sigmoid(model: nn.Module) -> bool:
    """Whether ``model``'s output is a sigmoid: its graph's output (a ``GraphModule``, e.g.
    MLflow's pt2 flavour, or what ``torch.fx`` traces) or a Sequential's last module."""
    if model not in _SIGMOID_SEEN:
        _SIGMOID_SEEN[model] = _final_sigmoid(model)
    return _SIGMOID_SEEN[model]


def _final_sigmoid(model: nn.Module) -> bool:
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and type(model).__name__ == "SplitInputs":
        model = inner
    while isinstance(model, nn.Sequential) and len(model):
        model = model[-1]
    if isinstance(model, nn.Sigmoid):
        return True
    graph = getattr(model, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        try:
            graph = torch.fx.symbolic_trace(model).graph
        except Exception:  # control flow, custom ops...: say nothing rather than guess
            return False
    outputs = [n for n in graph.nodes if n.op == "output"]
    if not outputs or not outputs[0].args:
        return False
    first = outputs[0].args[0]
    while isinstance(first, tuple | list) and first:
        first = first[0]
    return _sigmoid_node(first)


def refuse_probabilities(
    out: torch.Tensor, *, what: str = "the model", model: nn.Module | None = None
) -> None:
    """Raise when ``out`` (``(B, C)``, outside any ``torch.func`` transform) holds
    probabilities, not logits: every entry in [0, 1] and every row summing to 1 (a final
    ``nn.Softmax``). Cross-entropy on probabilities is not the model's loss, so every
    gradient, curvature and score would be silently wrong. Log-probabilities (a final
    ``nn.LogSoftmax``) are fine: ``log_softmax`` of log-probabilities is themselves.

    With ``model``, a one-logit binary model (outputs ``[0, z]`` from :func:`model_logits`)
    whose every ``z`` is in [0, 1] and whose graph ends in a sigmoid (:func:`final_sigmoid`)
    is refused too: those are probabilities, not the logit.

    Raises:
        ModelStateError: naming the fix.
    """
    if out.ndim != 2 or out.shape[1] < 2 or out.shape[0] == 0 or not out.is_floating_point():
        return
    z = out.detach().double()
    one_logit = out.shape[1] == 2 and bool((z[:, 0] == 0).all())  # [0, z] from model_logits
    if (
        one_logit
        and model is not None
        and bool(((z[:, 1] >= 0) & (z[:, 1] <= 1)).all())
        and final_sigmoid(model)
    ):
        raise ModelStateError(
            f"{what} returns probabilities (its one output ends in a sigmoid), but influence "
            f"needs the logit: register the model without its final sigmoid (trained with "
            f"BCEWithLogitsLoss, not BCELoss on sigmoid outputs)"
        )
    if bool(((z >= 0) & (z <= 1)).all()) and bool(((z.sum(1) - 1).abs() < 1e-4).all()):
        raise ModelStateError(
            f"{what} returns probabilities (every output row is in [0, 1] and sums to 1: a "
            f"final softmax), but influence needs logits or log-probabilities: register the "
            f"model without its final nn.Softmax, or with nn.LogSoftmax in its place"
        )


def model_logits(out: Any, *, binary: bool = True) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, the first item of a tuple or
    list, or the ``"logits"`` entry of a dict or of a Hugging Face ``ModelOutput``
    (``out.logits``). Anything else is refused naming what the model returned.

    With ``binary`` (classification), a single logit per example (``(B, 1)`` or ``(B,)``,
    a model trained with ``BCEWithLogitsLoss``) becomes the two-class logits ``[0, z]``:
    their softmax cross-entropy is the logistic loss of ``z`` exactly, so every influence,
    curvature and probability is the model's own (class 1 = the positive class)."""
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        out = out["logits"]
    elif not isinstance(out, torch.Tensor) and isinstance(
        getattr(out, "logits", None), torch.Tensor
    ):
        out = out.logits
    elif isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if isinstance(out, torch.Tensor):
        if binary and (out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1)):
            z = out.reshape(-1, 1)
            return torch.cat([torch.zeros_like(z), z], dim=1)
        return out
    keys = f" with keys {sorted(map(str, out))[:6]}" if isinstance(out, Mapping) else ""
    raise InvalidInputError(
        f"the model returned a {type(out).__name__}{keys}; infgate needs its logits: a "
        f"tensor, a tuple whose first item is the logits, or a dict / ModelOutput with a "
        f"'logits' entry"
    )


#: model classes whose vmap fallback has been warned about (once per process)
_WARNED_FALLBACK: set[str] = set()


def _no_batching_rule(exc: BaseException) -> bool:
    """Whether ``exc`` says ``torch.func.vmap`` failed on an op, not the model failing.

    Recurrent layers are the common case: the native RNN/GRU/LSTM kernels write their
    hidden state in place (``output with shape [1, H] doesn't match the broadcast shape
    [B, 1, H]``) and some kernels have no batching rule at all. Other errors are told
    apart by running one example unbatched (:meth:`GradientEngine._per_example`)."""
    text = str(exc)
    return isinstance(exc, NotImplementedError) or any(
        k in text
        for k in ("doesn't match the broadcast shape", "batching rule", "vmap", "BatchedTensor")
    )


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` means CUDA when torch sees a GPU, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InvalidInputError(
            f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} asked for, but torch sees no CUDA device")
    return dev


def _select(model: nn.Module, params: ParamSelector) -> list[str]:
    named = dict(model.named_parameters())
    if params is None:
        names = [n for n, p in named.items() if p.requires_grad]
    else:
        items: Sequence[str] | Sequence[nn.Module] = (
            [params] if isinstance(params, nn.Module) else params
        )
        names = []
        for item in items:
            if isinstance(item, nn.Module):
                ids = {id(p) for p in item.parameters()}
                hit = [n for n, p in named.items() if id(p) in ids]
                if not hit:
                    raise InvalidInputError(
                        f"module {type(item).__name__} has no parameters inside the model"
                    )
            elif isinstance(item, str):
                hit = [n for n in named if n == item or n.startswith(item + ".")]
                if not hit:
                    raise InvalidInputError(
                        f"no parameter named {item!r}; available: {sorted(named)[:12]}"
                    )
            else:
                raise InvalidInputError(
                    f"params entries must be names or modules, got {type(item).__name__}"
                )
            names.extend(n for n in hit if n not in names)
    if not names:
        raise ModelStateError(
            "no trainable parameters selected (all have requires_grad=False or params is empty)"
        )
    return names


class GradientEngine:
    """Per-example gradients, Gauss-Newton factors and Hessian pieces for one model.

    Args:
        model: the network; must be in eval mode if it has dropout or batch-norm.
        objective: the loss adapter.
        params: names (exact or module prefix) or modules whose parameters are selected;
            ``None`` selects every parameter with ``requires_grad``.
        device: where to compute.
        dtype: floating dtype for parameters and features (default: the model's; float32
            for float16 / bfloat16 weights, whose values float32 holds exactly: curvature
            and solves in half precision are not positive definite even when H is).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        *,
        params: ParamSelector = None,
        device: torch.device,
        dtype: torch.dtype | None = None,
    ) -> None:
        if model.training:
            culprits = [type(m).__name__ for m in model.modules() if isinstance(m, _STOCHASTIC)]
            if culprits:
                raise ModelStateError(
                    f"model is in training mode and has {sorted(set(culprits))}; influence "
                    f"needs deterministic outputs: call model.eval() first"
                )
        self.model = model
        self.objective = objective
        self.names = _select(model, params)
        named = dict(model.named_parameters())
        first = named[self.names[0]]
        if dtype is None:  # half-precision weights (AMP, bf16 checkpoints): maths in float32
            dtype = first.dtype if first.is_floating_point() else torch.float32
            dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        self.dtype = dtype
        self.device = device
        self.params = {n: named[n].detach().to(device, self.dtype) for n in self.names}
        fixed: dict[str, torch.Tensor] = {
            n: p.detach().to(device, self.dtype) for n, p in named.items() if n not in self.params
        }
        for n, b in model.named_buffers():
            fixed[n] = b.to(device, self.dtype) if b.is_floating_point() else b.to(device)
        self.fixed = fixed
        self.shapes = [self.params[n].shape for n in self.names]
        self.sizes = [self.params[n].numel() for n in self.names]
        self.n_params = sum(self.sizes)
        #: why per-example passes run one example at a time (``None``: batched with vmap)
        self.vmap_fallback: str | None = None
        #: why output Jacobian-vector products use per-example Jacobians (``None``: forward
        #: mode); an op without a forward-mode rule (``nn.EmbeddingBag``) sets it
        self.jvp_fallback: str | None = None
        if device.type != "cpu" and next(iter(model.parameters())).device != device:
            # Constants of a GraphModule live on the module; run a copy on the device.
            import copy

            self.model = copy.deepcopy(model).to(device)

    # -- flat <-> dict ---------------------------------------------------------------------
    def flatten(self, tensors: dict[str, torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
        """Concatenate per-parameter tensors into ``(*batch, P)`` in selection order."""
        lead = tensors[self.names[0]].shape[:batch_dims]
        return torch.cat([tensors[n].reshape(*lead, -1) for n in self.names], dim=-1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(flat, self.sizes, dim=-1)
        lead = flat.shape[:-1]
        return {
            n: p.reshape(*lead, *s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)
        }

    # -- forward ---------------------------------------------------------------------------
    def forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model, {**self.fixed, **params}, (x,))
        return model_logits(out, binary=self.objective.name == "cross_entropy")

    def output_jvp(
        self, x: torch.Tensor, tangent: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, J t)``: the batch's outputs and their directional derivative along the
        parameter ``tangent``. One forward-mode ``torch.func.jvp``; a model with an op that
        has no forward-mode rule (``nn.EmbeddingBag``'s kernel, some custom ops) gets the
        same numbers from reverse-mode per-example Jacobians, in row chunks (slower; warns
        once per model class; ``jvp_fallback`` says why)."""
        if self.jvp_fallback is None:
            try:
                with torch.no_grad(), forward_mode_kernels():  # fused kernels lack jvp rules
                    z, dz = jvp(lambda p: self.forward(p, x), (self.params,), (tangent,))[:2]
                return z, dz
            except NotImplementedError as exc:
                if not self.note_jvp_fallback(exc):
                    raise
        return self.output_jvp_by_jacobians(x, tangent)

    def output_jvp_by_jacobians(
        self, x: torch.Tensor, tangent: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`output_jvp` by reverse mode: ``J_b t`` from each example's output
        Jacobian ``J_b`` (``(C, P)``), a few rows at a time (at most ~2^24 Jacobian entries)."""
        z = self.outputs(x)
        dz = self.jacobian_products(x, self.flatten(tangent).reshape(-1, 1))[..., 0]
        return z, dz.reshape(z.shape).to(z.dtype)

    def jacobian_products(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(B, C, k)``: each example's output Jacobian times the ``(P, k)`` columns ``v``,
        by reverse mode, a few rows at a time (at most ~2^24 Jacobian entries held)."""
        v = v.to(self.device, self.dtype)
        with torch.no_grad():
            n_out = int(self.outputs(x[:1]).numel())
        step = max(1, (1 << 24) // max(n_out * self.n_params, 1))
        parts = [
            self.output_jacobians(x[i : i + step]).detach() @ v for i in range(0, x.shape[0], step)
        ]
        return torch.cat(parts) if parts else v.new_zeros(0, n_out, v.shape[1])

    def note_jvp_fallback(self, exc: NotImplementedError) -> bool:
        """Record (and warn once per model class) that ``exc`` came from an op without a
        forward-mode rule; ``False`` if it is some other error."""
        text = str(exc).lower()
        if "forward ad" not in text and "forward-mode" not in text:
            return False
        self.jvp_fallback = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        kind = type(self.model).__name__
        if "jvp:" + kind not in _WARNED_FALLBACK:
            _WARNED_FALLBACK.add("jvp:" + kind)
            warnings.warn(
                f"forward-mode autodiff cannot run this model ({self.jvp_fallback}); "
                f"Jacobian-vector products use per-example Jacobians instead (same results, "
                f"slower)",
                RuntimeWarning,
                stacklevel=3,
            )
        return True

    @torch.no_grad()
    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Model outputs for a batch at the current parameters."""
        return self.forward(self.params, x)

    def checked_outputs(self, start: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Outputs, after checking inputs fit the model, labels fit them and they are finite."""
        try:
            out = self.outputs(x)
        except RuntimeError as exc:
            raise InvalidInputError(
                f"the model cannot take inputs of shape {tuple(x.shape[1:])} per example "
                f"(examples {start}..{start + x.shape[0] - 1}): {exc}"
            ) from exc
        if self.objective.name == "cross_entropy":
            refuse_probabilities(out, model=self.model)
        self.objective.check_targets(out, y)
        finite = torch.isfinite(out.reshape(out.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            rows = (torch.nonzero(~finite).flatten()[:5] + start).tolist()
            raise NonFiniteError(f"model outputs are NaN or inf for example(s) {rows}")
        return out

    # -- gradients -------------------------------------------------------------------------
    def _loss_one(
        self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        out = self.forward(params, x.unsqueeze(0))
        return self.objective.loss(out, y.unsqueeze(0)).squeeze(0)

    def per_example_grads(self, start: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(B, P)`` gradients of each example's loss w.r.t. the selected parameters."""
        self.checked_outputs(start, x, y)
        g = self._per_example(grad(self._loss_one), x, y)
        flat = self.flatten(g, batch_dims=1)
        self._check_finite(start, flat, "gradients")
        return flat

    def output_jacobians(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, P)`` Jacobians of each example's outputs w.r.t. the selected parameters."""

        def f(params: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
            return self.forward(params, xi.unsqueeze(0)).reshape(-1)

        jac = self._per_example(jacrev(f), x)
        return torch.cat(
            [
                jac[n].reshape(x.shape[0], -1, sz)
                for n, sz in zip(self.names, self.sizes, strict=True)
            ],
            dim=-1,
        )

    def _per_example(
        self, fn: Callable[..., dict[str, torch.Tensor]], *batch: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``fn(params, *example)`` for every example of ``batch``, stacked: one
        ``torch.func.vmap`` call, or, for a model with an op vmap cannot batch (recurrent
        layers), one call per example (same numbers, slower; warns once per model class)."""
        if self.vmap_fallback is None:
            try:
                with _vmappable_attention():
                    out: dict[str, torch.Tensor] = vmap(fn, in_dims=(None, *[0] * len(batch)))(
                        self.params, *batch
                    )
                return out
            except (RuntimeError, NotImplementedError) as exc:
                if not _no_batching_rule(exc):
                    # vmap's own bugs read like shape errors (PReLU under vmap(jacrev)):
                    # if one example runs unbatched the model is fine and vmap is not
                    try:
                        fn(self.params, *(t[0] for t in batch))
                    except Exception:
                        raise exc from None
                self.vmap_fallback = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                kind = type(self.model).__name__
                if kind in _WARNED_FALLBACK:
                    return self._per_example(fn, *batch)
                _WARNED_FALLBACK.add(kind)
                warnings.warn(
                    f"torch.func.vmap cannot batch this model's per-example passes "
                    f"({self.vmap_fallback}); computing them one example at a time "
                    f"(same results, slower)",
                    RuntimeWarning,
                    stacklevel=3,
                )
        rows: list[dict[str, Any]] = [
            fn(self.params, *(t[i] for t in batch)) for i in range(batch[0].shape[0])
        ]
        if not rows:
            return {n: self.params[n].new_zeros(0, *self.params[n].shape) for n in self.names}
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def factor_grads(self, start: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(B, K, P)`` rows ``U_b = A_b J_b`` with ``sum_b U_b^T U_b`` = Gauss-Newton sum.

        ``J_b`` is the Jacobian of example b's outputs w.r.t. the parameters and
        ``A_b^T A_b`` the loss Hessian in output space (Martens 2020, Sec. 8).
        """
        out = self.checked_outputs(start, x, y)
        j = self.output_jacobians(x)
        a = self.objective.output_hessian_factor(out.reshape(out.shape[0], -1), y).to(j.dtype)
        u = torch.bmm(a, j)
        self._check_finite(start, u.reshape(u.shape[0], -1), "Gauss-Newton factors")
        return u

    def batch_hessian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(P, P)`` Hessian of the batch's SUMMED loss (exact second derivatives)."""
        flat0 = self.flatten(self.params)

        def total(flat: torch.Tensor) -> torch.Tensor:
            return self.objective.loss(self.forward(self.unflatten(flat), x), y).sum()

        with forward_mode_kernels():  # hessian = jacfwd(jacrev): forward mode
            return torch.func.hessian(total)(flat0)

    def hvp(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Hessian of the batch's summed loss times ``v`` (``(P,)`` or ``(P, k)``)."""
        flat0 = self.flatten(self.params)

        def total(flat: torch.Tensor) -> torch.Tensor:
            return self.objective.loss(self.forward(self.unflatten(flat), x), y).sum()

        def one(vec: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(torch.func.grad(total), (flat0,), (vec,))[1]

        with forward_mode_kernels():
            return one(v) if v.ndim == 1 else vmap(one, in_dims=1, out_dims=1)(v)

    @staticmethod
    def _check_finite(start: int, values: torch.Tensor, what: str) -> None:
        # A row sum is finite iff every entry is (barring overflow): one cheap reduction on
        # the hot path, the exact row scan only when something is wrong.
        if bool(torch.isfinite(values.sum(dim=1)).all()):
            return
        finite = torch.isfinite(values).all(dim=1)
        if not bool(finite.all()):
            rows = (torch.nonzero(~finite).flatten()[:5] + start).tolist()
            raise NonFiniteError(f"{what} are NaN or inf for example(s) {rows}")
