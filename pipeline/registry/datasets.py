"""A model version's training and evaluation data: where it is, which columns, does it fit.

Training data resolution order (first that exists wins):

1. an explicit URI passed by the caller,
2. the model-version tag ``infgate.train_data``,
3. the dataset input the training run logged with ``mlflow.log_input`` (context
   ``training`` preferred).

Data files are Parquet or CSV with one row per example: an ``example_id`` column, feature
columns and a ``label`` column (class indices). Which columns are features, and the tensor
shape the model gets, follow :mod:`infgate.data.columns`: explicit :class:`ColumnOptions`,
then the tags ``infgate.feature_columns`` / ``infgate.token_columns`` /
``infgate.metadata_columns`` (JSON lists or comma-separated names) and
``infgate.input_shape`` (``"1x8x8"`` or a JSON list), then the model's MLflow signature,
then every numeric column but label, id, true label and metadata. Tags
``infgate.label_column``, ``infgate.classes`` (JSON list), ``infgate.image_shape``
(``"8x8"``, for pictures), ``infgate.image_scale`` and ``infgate.true_label_column``
(known clean labels, e.g. in a benchmark: kept out of the features and used only for the
recall curve) refine how they are read. One list column of token sequences of different
lengths is padded with ``infgate.pad_token_id`` (else the ``padding_idx`` of the model's
embeddings, when a model is given) to ``input_shape`` or the longest training sequence.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from infgate.data.columns import (
    ColumnOptions,
    ColumnPlan,
    ModelInputSpec,
    resolve_columns,
    with_sequence_length,
)
from infgate.data.decode import longest_sequence
from infgate.data.readers import data_file, read_frame, read_schema, read_table
from infgate.data.streamed import StreamedTrainingData
from infgate.data.training import EvalData, TrainingData
from infgate.data.validation import check_token_ids, embedding_size, token_extremes
from infgate.errors import DataResolutionError, DatasetMismatchError
from infgate.influence.gradients import model_logits, refuse_probabilities
from infgate.registry.inputs import TAG_CLASSES as TAG_CLASSES
from infgate.registry.inputs import TAG_IMAGE_SHAPE as TAG_IMAGE_SHAPE
from infgate.registry.inputs import TAG_LABEL_COLUMN as TAG_LABEL_COLUMN
from infgate.registry.inputs import TAG_TRUE_LABEL_COLUMN as TAG_TRUE_LABEL_COLUMN
from infgate.registry.inputs import (
    column_options,
    display_tags,
    embedding_padding_idx,
    model_input_spec,
)
from torch import nn

if TYPE_CHECKING:
    from infgate.registry.refs import ModelVersionRef

__all__ = [
    "ResolvedData",
    "StreamedData",
    "check_data_fits",
    "load_eval_data",
    "load_training_data",
    "stream_training_data",
]

log = logging.getLogger(__name__)

TAG_TRAIN_DATA = "infgate.train_data"
TAG_EVAL_DATA = "infgate.eval_data"


def _download(uri: str) -> Path:
    """A local path for ``uri``: local paths as they are, anything else via MLflow artifacts."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" not in uri and not uri.startswith(("runs:/", "models:/")):
        p = Path(uri)
        if not p.exists():
            raise DataResolutionError(f"training data file {uri!r} does not exist")
        return p
    import mlflow.artifacts

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as e:  # MLflow raises several types for a missing artifact
        raise DataResolutionError(f"could not download training data {uri!r}: {e}") from e


def _read_frame(path: Path) -> pd.DataFrame:
    """The one Parquet/CSV file at ``path`` as a DataFrame."""
    return read_frame(path)


def _dataset_input_uri(
    mv: ModelVersionRef, tracking_uri: str | None
) -> tuple[str, int | None] | None:
    """(source URI, registered row count) of the training run's logged dataset, if any."""
    from infgate.registry.refs import client

    if not mv.run_id:
        return None
    run = client(tracking_uri).get_run(mv.run_id)
    inputs = list(run.inputs.dataset_inputs or [])
    if not inputs:
        return None

    def context(di: Any) -> str:
        return next((t.value for t in di.tags if t.key == "mlflow.data.context"), "")

    inputs.sort(key=lambda di: context(di) != "training")
    ds = inputs[0].dataset
    try:
        source = json.loads(ds.source)
    except (TypeError, ValueError):
        source = {"uri": ds.source}
    uri = source.get("uri") or source.get("url") or source.get("path")
    if not uri:
        raise DataResolutionError(
            f"{mv.uri}: the run's dataset input {ds.name!r} has a {ds.source_type!r} source "
            f"infgate cannot read: {ds.source}"
        )
    n_rows = None
    try:
        n_rows = int(json.loads(ds.profile or "{}").get("num_rows"))
    except (TypeError, ValueError):
        n_rows = None
    return str(uri), n_rows


@dataclass(frozen=True)
class ResolvedData:
    """Training data plus where it came from and the row count the registry recorded.

    Attributes:
        data: the training examples (in memory; a ``StreamedTrainingData`` when the scan
            streams the file, see ``infgate.scan.stages.streamed_resolved``).
        frame: the file's rows as a DataFrame, without the true-label column (ids and
            labels only when streamed).
        uri: where the data was read from.
        origin: how it was found (``explicit``, ``tag infgate.train_data``, ...).
        registered_rows: the row count MLflow recorded for the dataset input, if any.
        label_column: the label column.
        true_labels: the known clean labels, if the data has them.
        plan: the columns used (also how evaluation data is read).
        spec: what the model signature says, if anything.
    """

    data: TrainingData
    frame: pd.DataFrame
    uri: str
    origin: str
    registered_rows: int | None
    label_column: str
    true_labels: np.ndarray | None = None
    plan: ColumnPlan | None = None
    spec: ModelInputSpec | None = None

    @property
    def feature_columns(self) -> tuple[str, ...]:
        """The columns the model reads (for the gate's missing-feature check)."""
        if self.plan is not None:
            return self.plan.columns
        return tuple(c for c in self.frame.columns if c not in {"example_id", self.label_column})


@dataclass(frozen=True)
class StreamedData:
    """Streamed training data (features stay in the Parquet file) and where it came from."""

    data: StreamedTrainingData
    uri: str
    origin: str
    registered_rows: int | None
    label_column: str
    plan: ColumnPlan
    true_labels: np.ndarray | None = None
    spec: ModelInputSpec | None = None


def _locate(
    mv: ModelVersionRef, data_uri: str | None, tracking_uri: str | None
) -> tuple[str, str, int | None]:
    if data_uri:
        return data_uri, "explicit", None
    if mv.tags.get(TAG_TRAIN_DATA):
        return mv.tags[TAG_TRAIN_DATA], f"tag {TAG_TRAIN_DATA}", None
    found = _dataset_input_uri(mv, tracking_uri)
    if found is None:
        raise DataResolutionError(
            f"{mv.uri} has no resolvable training data: pass a data URI, set the "
            f"model-version tag {TAG_TRAIN_DATA!r}, or log the dataset with mlflow.log_input"
        )
    return found[0], "run dataset input", found[1]


def _plan(
    mv: ModelVersionRef,
    schema: Any,
    uri: str,
    columns: ColumnOptions | None,
    label_column: str | None,
    use_signature: bool,
    tracking_uri: str | None,
    model: nn.Module | None = None,
) -> tuple[ColumnPlan, ModelInputSpec | None]:
    options, origins = column_options(mv, columns, label_column=label_column)
    spec = model_input_spec(mv, tracking_uri=tracking_uri) if use_signature else None
    plan = resolve_columns(schema, options, spec, origins=origins, what=f"training data {uri!r}")
    return _model_padding(plan, schema, model), spec


def _model_padding(plan: ColumnPlan, schema: Any, model: nn.Module | None) -> ColumnPlan:
    """A flat list column of token ids with no pad id set takes the ``padding_idx`` of the
    model's embeddings (so ragged sequences pad with what the model masks)."""
    if model is None or plan.pad_token_id is not None or plan.kind != "array":
        return plan
    import pyarrow as pa

    t = schema.field(plan.columns[0]).type
    flat = pa.types.is_list(t) or pa.types.is_large_list(t)
    if flat:
        flat = not pa.types.is_nested(t.value_type)
    if plan.dtype != "int64" or not flat or (plan.input_shape and len(plan.input_shape) != 1):
        return plan
    pad = embedding_padding_idx(model)
    if pad is None:
        return plan
    return dataclasses.replace(
        plan, pad_token_id=pad, pad_origin="the padding_idx of the model's embeddings"
    )


def _padded_plan(plan: ColumnPlan, column: Any, elsewhere: int = 0) -> ColumnPlan:
    """``plan`` with its padded length fixed from the training rows' token ``column`` (or
    ``elsewhere``, the evaluation rows' longest, when longer) when ``input_shape`` did not
    fix it."""
    if plan.pad_token_id is None or plan.input_shape is not None:
        return plan
    plan = with_sequence_length(plan, longest_sequence(column), elsewhere)
    log.info(
        "token sequences padded to %s with id %s (%s)",
        plan.input_shape,
        plan.pad_token_id,
        plan.shape_origin,
    )
    return plan


def _longest_in(plan: ColumnPlan, uris: Sequence[str]) -> int:
    """The longest token sequence of ``plan``'s first column in the files ``uris`` (the
    evaluation data), when the padded length is still to be fixed; files without the
    column count 0 (reading them as evaluation data names what is missing)."""
    if plan.pad_token_id is None or plan.input_shape is not None:
        return 0
    longest = 0
    for uri in uris:
        path = data_file(_download(uri))
        if plan.columns[0] not in read_schema(path).names:
            continue
        longest = max(longest, longest_sequence(read_table(path, plan.columns[:1]).column(0)))
    return longest


def load_training_data(
    mv: ModelVersionRef,
    *,
    data_uri: str | None = None,
    label_column: str | None = None,
    columns: ColumnOptions | None = None,
    use_signature: bool = True,
    tracking_uri: str | None = None,
    model: nn.Module | None = None,
    length_from: Sequence[str] = (),
) -> ResolvedData:
    """Resolve and read the version's training data whole (explicit URI > tag > run input).

    Args:
        mv: the model version.
        data_uri: an explicit data file (wins over the tag and the run's dataset input).
        label_column: the label column (wins over ``columns`` and the tag).
        columns: explicit column options (win over the version's tags).
        use_signature: read feature columns / input shape from the model's signature.
        tracking_uri: MLflow tracking URI.
        model: the loaded model, whose embeddings' ``padding_idx`` pads ragged token
            sequences when no option or tag names a pad id.
        length_from: other files (the evaluation data) whose token sequences the padded
            length must also hold, when neither the model nor an option fixes it.

    Raises:
        DataResolutionError: nothing resolvable, unreadable file, no label column, or
            named feature columns missing.
        DatasetMismatchError: the columns do not fit the shape the model expects.
    """
    uri, origin, registered_rows = _locate(mv, data_uri, tracking_uri)
    path = data_file(_download(uri))
    table = read_table(path)
    plan, spec = _plan(
        mv, table.schema, uri, columns, label_column, use_signature, tracking_uri, model
    )
    plan = _padded_plan(plan, table.column(plan.columns[0]), _longest_in(plan, length_from))
    true_labels = None
    if plan.true_label_column:
        true_labels = table.column(plan.true_label_column).to_numpy(zero_copy_only=False)
        table = table.drop_columns([plan.true_label_column])
    classes, image_shape = display_tags(mv)
    data = TrainingData.from_table(
        table,
        plan,
        classes=classes,
        image_shape=image_shape,
        source_uri=uri,
        name=f"{mv.name}-v{mv.version}-train",
    )
    frame = table.to_pandas()
    if "example_id" not in frame.columns:  # row positions, as TrainingData numbered them
        frame.insert(0, "example_id", data.example_ids.astype(str))
    if data.label_names:  # the gate checks indices against the model's outputs
        frame[plan.label_column] = data.labels
    log.info(
        "training data for %s: %s (%s), %d rows, %s",
        mv.uri,
        uri,
        origin,
        len(data),
        plan.describe(),
    )
    return ResolvedData(
        data, frame, uri, origin, registered_rows, plan.label_column, true_labels, plan, spec
    )


def training_data_path(
    mv: ModelVersionRef, data_uri: str | None = None, tracking_uri: str | None = None
) -> Path:
    """The local file of the version's training data (explicit URI > tag > run input), e.g.
    to decide whether to stream it; a remote artifact is downloaded (again by the reader).

    Raises:
        DataResolutionError: as :func:`load_training_data`.
    """
    uri, _, _ = _locate(mv, data_uri, tracking_uri)
    return data_file(_download(uri))


def stream_training_data(
    mv: ModelVersionRef,
    *,
    data_uri: str | None = None,
    label_column: str | None = None,
    columns: ColumnOptions | None = None,
    use_signature: bool = True,
    batch_rows: int = 65_536,
    tracking_uri: str | None = None,
    model: nn.Module | None = None,
    length_from: Sequence[str] = (),
) -> StreamedData:
    """Like :func:`load_training_data`, but the features stream from Parquet in batches of
    ``batch_rows`` rows (see :mod:`infgate.data.streamed` for what still loads whole).

    Raises:
        DataResolutionError: as :func:`load_training_data`, or the file is CSV.
    """
    uri, origin, registered_rows = _locate(mv, data_uri, tracking_uri)
    path = data_file(_download(uri))
    plan, spec = _plan(
        mv, read_schema(path), uri, columns, label_column, use_signature, tracking_uri, model
    )
    classes, image_shape = display_tags(mv)
    data = StreamedTrainingData.from_parquet(
        path,
        plan,
        batch_rows=batch_rows,
        classes=classes,
        image_shape=image_shape,
        source_uri=uri,
        name=f"{mv.name}-v{mv.version}-train",
        min_length=_longest_in(plan, length_from),
    )
    plan = data.plan  # ragged token sequences: with the padded length fixed
    true_labels = None
    if plan.true_label_column:
        true_labels = read_table(path, [plan.true_label_column]).column(0).to_numpy()
    log.info("streaming training data for %s: %s (%s), %d rows", mv.uri, uri, origin, len(data))
    return StreamedData(
        data, uri, origin, registered_rows, plan.label_column, plan, true_labels, spec
    )


def load_eval_data(
    mv: ModelVersionRef, eval_uri: str | None, train: ResolvedData
) -> EvalData | None:
    """The evaluation data (explicit URI, else tag ``infgate.eval_data``), read with the
    training data's columns and shape; ``None`` when neither is given.

    Raises:
        DataResolutionError: the file is missing or unreadable.
        DatasetMismatchError: it lacks the training data's feature columns.
    """
    uri = eval_uri or mv.tags.get(TAG_EVAL_DATA)
    if not uri:
        return None
    table = read_table(_download(uri))
    plan = train.plan
    if plan is None:  # built by hand (e.g. the MLflow evaluator): the same default rules
        plan = resolve_columns(
            train_schema(train),
            ColumnOptions(label_column=train.label_column),
            what="training data",
        )
    return EvalData.from_table(table, plan, name="eval", classes=display_tags(mv)[0])


def train_schema(train: ResolvedData) -> Any:
    """The Arrow schema of a resolved training frame."""
    import pyarrow as pa

    return pa.Schema.from_pandas(train.frame, preserve_index=False)


def check_data_fits(
    model: nn.Module,
    features: np.ndarray | StreamedTrainingData,
    labels: np.ndarray | None = None,
    *,
    what: str = "training data",
    plan: ColumnPlan | None = None,
) -> int:
    """Check token ids against the model's embedding, run the model on two rows, and return
    its number of outputs (classes).

    Raises:
        InvalidInputError: token ids outside the model's first ``nn.Embedding``.
        DatasetMismatchError: the rows do not fit the model's input, or labels exceed its
            outputs.
    """
    if isinstance(features, StreamedTrainingData):
        plan = plan or features.plan
        head, extremes, row_shape = features.head(2), features.token_range, features.row_shape
    else:
        head, row_shape = features[:2], tuple(features.shape[1:])
        extremes = token_extremes(features) if features.dtype.kind in "iu" else None
    if extremes is not None:
        n_emb = embedding_size(model)
        if n_emb is not None:
            lo, lo_row, hi, hi_row = extremes
            check_token_ids(lo, hi, n_emb, low_row=lo_row, high_row=hi_row, what=what)
    x = torch.as_tensor(np.asarray(head))
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    x = (
        x.to(weight.dtype if weight is not None else torch.float32)
        if x.is_floating_point()
        else x.long()
    )
    try:
        with torch.no_grad():
            out = model_logits(model(x))
    except Exception as e:  # any shape error from an arbitrary model
        cols = f"{plan.describe()} " if plan is not None else ""
        hint = plan.fix_hint() if plan is not None else "choose the feature columns"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetMismatchError(
            f"{what} {cols}rows of shape {row_shape} do not fit the model ({first}); {hint}"
        ) from e
    if out.ndim != 2:
        raise DatasetMismatchError(
            f"model output has shape {tuple(out.shape)}; expected (n, classes)"
        )
    refuse_probabilities(out, model=model)
    n_out = int(out.shape[1])
    if labels is not None and len(labels) and int(np.max(labels)) >= n_out:
        raise DatasetMismatchError(
            f"{what} has label {int(np.max(labels))} but the model has only {n_out} outputs"
        )
    return n_out
