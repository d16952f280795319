"""When may a trained model's outputs on its own training rows stand in for fresh rows?

Only through approximate leave-one-out outputs, and those are accurate only for a model
that is a generalized linear model in its trainable parameters (Rad & Maleki 2020); see
the "Validity" paragraph of :mod:`infgate.detect.mismatch`. :func:`glm_reason` is that rule.
"""

from __future__ import annotations

from torch import nn

__all__ = ["glm_reason"]


def glm_reason(model: nn.Module) -> str | None:
    """``None`` when ``model`` is a GLM in its trainable parameters (all in one
    ``nn.Linear``, nothing trainable upstream of it), else why not."""
    owners = {
        name.rsplit(".", 1)[0] if "." in name else ""
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    if not owners:
        return "the model has no trainable parameters"
    modules = dict(model.named_modules())
    if len(owners) == 1:
        owner = modules.get(next(iter(owners)))
        if isinstance(owner, nn.Linear):
            return None
    kinds = sorted({type(modules[o]).__name__ for o in owners if o in modules})
    return (
        f"the model is not linear in its parameters ({len(owners)} trainable modules: "
        f"{', '.join(kinds[:4])}); approximate leave-one-out outputs of its training rows are "
        f"not guaranteed to be distributed like outputs on fresh rows"
    )
