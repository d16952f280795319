"""What a model version says about its input: column tags and the MLflow signature.

Tags (JSON lists or comma-separated names): ``infgate.feature_columns``,
``infgate.token_columns``, ``infgate.metadata_columns``; ``infgate.input_shape``
(``"1x8x8"`` or a JSON list); ``infgate.label_column``, ``infgate.true_label_column``,
``infgate.image_scale``, ``infgate.pad_token_id`` (ragged token sequences),
``infgate.model_inputs`` (the columns of a model with several inputs); for people:
``infgate.classes`` (JSON list) and ``infgate.image_shape`` (``"8x8"``). Explicit
:class:`~infgate.data.columns.ColumnOptions` win over tags; tags win over the signature
(:func:`model_input_spec`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import TYPE_CHECKING, Any

from infgate.data.columns import ColumnOptions, ModelInputSpec
from infgate.errors import InvalidInputError

if TYPE_CHECKING:
    from infgate.registry.refs import ModelVersionRef

__all__ = ["column_options", "display_tags", "model_input_spec"]

log = logging.getLogger(__name__)

TAG_LABEL_COLUMN = "infgate.label_column"
TAG_CLASSES = "infgate.classes"
TAG_IMAGE_SHAPE = "infgate.image_shape"
TAG_TRUE_LABEL_COLUMN = "infgate.true_label_column"
TAG_FEATURE_COLUMNS = "infgate.feature_columns"
TAG_TOKEN_COLUMNS = "infgate.token_columns"
TAG_METADATA_COLUMNS = "infgate.metadata_columns"
TAG_INPUT_SHAPE = "infgate.input_shape"
TAG_IMAGE_SCALE = "infgate.image_scale"
TAG_PAD_TOKEN_ID = "infgate.pad_token_id"
TAG_MODEL_INPUTS = "infgate.model_inputs"


def _tag_names(tags: dict[str, str], key: str) -> tuple[str, ...] | None:
    raw = (tags.get(key) or "").strip()
    if not raw:
        return None
    if raw.startswith("["):
        try:
            names = json.loads(raw)
        except ValueError as e:
            raise InvalidInputError(f"tag {key} is not a JSON list of names: {raw!r}") from e
        return tuple(str(n) for n in names)
    return tuple(n.strip() for n in raw.split(",") if n.strip())


def _tag_shape(tags: dict[str, str], key: str) -> tuple[int, ...] | None:
    raw = (tags.get(key) or "").strip()
    if not raw:
        return None
    try:
        dims = json.loads(raw) if raw.startswith("[") else raw.lower().split("x")
        return tuple(int(d) for d in dims)
    except ValueError as e:
        raise InvalidInputError(
            f"tag {key} must look like '1x8x8' or [1, 8, 8], got {raw!r}"
        ) from e


def _tag_int(tags: dict[str, str], key: str) -> int | None:
    raw = (tags.get(key) or "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError as e:
        raise InvalidInputError(f"tag {key} must be an integer, got {raw!r}") from e


def embedding_padding_idx(model: Any) -> int | None:
    """The ``padding_idx`` the model's token embeddings share (``nn.Embedding`` /
    ``nn.EmbeddingBag`` modules, or ``aten.embedding`` / ``aten.embedding_bag`` calls of a
    pt2 graph), or ``None`` when none sets one or they differ."""
    import torch

    found: set[int] = set()
    aten = torch.ops.aten
    where = {aten.embedding.default: 2, aten.embedding_bag.padding_idx: 8}  # arg index
    for m in model.modules() if isinstance(model, torch.nn.Module) else ():
        if isinstance(m, torch.nn.Embedding | torch.nn.EmbeddingBag) and m.padding_idx is not None:
            found.add(int(m.padding_idx) % int(m.num_embeddings))
        graph = getattr(m, "graph", None)
        for node in graph.nodes if isinstance(graph, torch.fx.Graph) else ():
            at = where.get(node.target) if node.op == "call_function" else None
            if at is not None:
                pad = node.args[at] if len(node.args) > at else node.kwargs.get("padding_idx", -1)
                if isinstance(pad, int) and pad >= 0:
                    found.add(pad)
    return found.pop() if len(found) == 1 else None


def column_options(
    mv: ModelVersionRef,
    explicit: ColumnOptions | None = None,
    *,
    label_column: str | None = None,
) -> tuple[ColumnOptions, dict[str, str]]:
    """Merge explicit options over the version's tags; returns options and field origins.

    An explicit field wins when it differs from the default; otherwise the tag is used.
    """
    base = explicit or ColumnOptions()
    default = ColumnOptions()
    tags = mv.tags
    from_tags: dict[str, Any] = {
        "feature_columns": _tag_names(tags, TAG_FEATURE_COLUMNS),
        "token_columns": _tag_names(tags, TAG_TOKEN_COLUMNS),
        "metadata_columns": _tag_names(tags, TAG_METADATA_COLUMNS),
        "input_shape": _tag_shape(tags, TAG_INPUT_SHAPE),
        "label_column": tags.get(TAG_LABEL_COLUMN) or None,
        "true_label_column": tags.get(TAG_TRUE_LABEL_COLUMN) or None,
        "image_scale": float(tags[TAG_IMAGE_SCALE]) if tags.get(TAG_IMAGE_SCALE) else None,
        "pad_token_id": _tag_int(tags, TAG_PAD_TOKEN_ID),
        "model_inputs": _tag_names(tags, TAG_MODEL_INPUTS),
    }
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, tag_value in from_tags.items():
        mine = getattr(base, name)
        if mine != getattr(default, name) or tag_value is None:
            merged[name], origins[name] = mine, f"option {name}"
        else:
            merged[name], origins[name] = tag_value, f"tag infgate.{name}"
    if label_column:
        merged["label_column"], origins["label_column"] = label_column, "option label_column"
    return dataclasses.replace(base, **merged), origins


def model_input_spec(
    mv: ModelVersionRef, *, tracking_uri: str | None = None
) -> ModelInputSpec | None:
    """What the version's MLflow signature says about its input, or ``None`` (no signature)."""
    import mlflow.artifacts
    from infgate.registry.refs import client
    from mlflow.models import Model

    try:
        root = client(tracking_uri).get_model_version_download_uri(mv.name, mv.version)
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{root.rstrip('/')}/MLmodel", tracking_uri=tracking_uri
        )
        signature = Model.load(path).signature
    except Exception as e:  # no MLmodel file, unreachable store: the data decides
        log.debug("no signature for %s: %s", mv.uri, e)
        return None
    if signature is None or signature.inputs is None:
        return None
    inputs = signature.inputs
    if inputs.is_tensor_spec():
        specs = inputs.inputs
        if not specs:
            return None
        named = tuple(str(t.name) for t in specs if t.name)
        return ModelInputSpec(
            shape=tuple(int(d) for d in specs[0].shape),
            dtype=str(specs[0].type),
            inputs=len(specs),
            input_names=named if len(named) == len(specs) else None,
        )
    names = [n for n in inputs.input_names() if isinstance(n, str)]
    return ModelInputSpec(columns=tuple(names)) if names else None


def display_tags(mv: ModelVersionRef) -> tuple[list[str] | None, tuple[int, int] | None]:
    """``(classes, image_shape)`` from the tags, for people (names, pictures)."""
    classes = json.loads(mv.tags[TAG_CLASSES]) if mv.tags.get(TAG_CLASSES) else None
    shape = mv.tags.get(TAG_IMAGE_SHAPE)
    image_shape = tuple(int(v) for v in shape.lower().split("x")) if shape else None
    return classes, image_shape  # type: ignore[return-value]
