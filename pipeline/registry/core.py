"""MLflow registry in and out: resolve a model version, load it and its training data, log back.

Model references: ``models:/name@alias``, ``models:/name/version``, or a bare name plus a
version. Training data resolution order (first that exists wins):

1. an explicit URI passed by the caller,
2. the model-version tag ``infgate.train_data``,
3. the dataset input the training run logged with ``mlflow.log_input`` (context
   ``training`` preferred).

Data files are Parquet or CSV with one row per example: an ``example_id`` column, feature
columns and a ``label`` column (class indices). Tags ``infgate.label_column``,
``infgate.classes`` (JSON list), ``infgate.image_shape`` (``"8x8"``) and
``infgate.true_label_column`` (known clean labels, e.g. in a benchmark: kept out of the
features and used only for the recall curve) refine how they are read.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from infgate.data.training import TrainingData
from infgate.errors import (
    DataResolutionError,
    DatasetMismatchError,
    InvalidInputError,
    RegistryError,
)
from torch import nn

__all__ = [
    "ModelVersionRef",
    "ResolvedData",
    "alias_version",
    "check_data_fits",
    "client",
    "load_model",
    "load_training_data",
    "log_scan_run",
    "resolve_model_version",
    "set_alias",
    "set_gate_tags",
    "withdraw_alias",
]

log = logging.getLogger(__name__)

TAG_TRAIN_DATA = "infgate.train_data"
TAG_LABEL_COLUMN = "infgate.label_column"
TAG_CLASSES = "infgate.classes"
TAG_IMAGE_SHAPE = "infgate.image_shape"
TAG_TRUE_LABEL_COLUMN = "infgate.true_label_column"
TAG_SCAN_ID = "infgate.scan_id"
TAG_GATE = "infgate.gate"
TAG_REASON = "infgate.reason"
TAG_SCAN_RUN = "infgate.scan_run_id"
_MLFLOW_TAG_MAX = 5000


@dataclass(frozen=True)
class ModelVersionRef:
    """One resolved registry model version.

    Attributes:
        name: registered model name.
        version: version number as a string.
        run_id: the run that logged the model (``None`` when registered from elsewhere).
        source: the model's storage URI.
        tags: model-version tags at resolution time.
        alias: the alias it was resolved through, if any.
    """

    name: str
    version: str
    run_id: str | None = None
    source: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    alias: str | None = None

    @property
    def uri(self) -> str:
        """``models:/name/version``: pinned, unlike an alias."""
        return f"models:/{self.name}/{self.version}"


def client(tracking_uri: str | None = None) -> Any:
    """An ``MlflowClient`` for ``tracking_uri`` (default: MLflow's own resolution)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")


def resolve_model_version(
    ref: str, *, version: str | int | None = None, tracking_uri: str | None = None
) -> ModelVersionRef:
    """Resolve ``models:/name@alias``, ``models:/name/version`` or ``name`` + ``version``.

    Raises:
        InvalidInputError: a malformed reference.
        RegistryError: the model, alias or version does not exist.
    """
    from mlflow.exceptions import MlflowException

    alias: str | None = None
    m = _URI.match(ref.strip())
    if m:
        if version is not None:
            raise InvalidInputError(
                f"give a version either in the URI or separately, not both: {ref!r}"
            )
        name, alias, version = m["name"], m["alias"], m["version"]
    elif ref.startswith("models:/") or "/" in ref or "@" in ref:
        raise InvalidInputError(
            f"model reference {ref!r} is not models:/name@alias, models:/name/version or a name"
        )
    else:
        name = ref.strip()
        if version is None:
            raise InvalidInputError(f"model {name!r} given without a version or alias")
    c = client(tracking_uri)
    try:
        c.get_registered_model(name)
    except MlflowException as e:
        raise RegistryError(f"no registered model named {name!r}") from e
    try:
        mv = (
            c.get_model_version_by_alias(name, alias)
            if alias
            else c.get_model_version(name, str(version))
        )
    except MlflowException as e:
        what = f"alias {alias!r}" if alias else f"version {version!r}"
        raise RegistryError(f"registered model {name!r} has no {what}") from e
    return ModelVersionRef(
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id or None,
        source=mv.source,
        tags=dict(mv.tags or {}),
        alias=alias,
    )


def load_model(mv: ModelVersionRef, *, tracking_uri: str | None = None) -> nn.Module:
    """Load the version's torch model (``pt2`` GraphModule or pickled module), in eval mode."""
    import mlflow
    import mlflow.pytorch

    if tracking_uri:
        mlflow.set_registry_uri(tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pytorch.load_model(mv.uri, map_location="cpu")
    if not isinstance(model, nn.Module):
        raise InvalidInputError(
            f"{mv.uri} did not load as a torch nn.Module, got {type(model).__name__}"
        )
    try:
        model.eval()
    except (NotImplementedError, RuntimeError):  # exported programs refuse mode switches
        log.debug("model %s has no train/eval switch", mv.uri)
    _reload_when_unpickled(model, mv.uri, tracking_uri)
    return model


def _reload_when_unpickled(model: nn.Module, uri: str, tracking_uri: str | None) -> None:
    """Let a ``pt2`` model travel to another process (a Dask worker, a Prefect result).

    ``torch.export``'s GraphModule cannot be pickled (it holds local functions). Each such
    module has a class of its own (``GraphModule.__new__`` makes one per instance), so we
    teach that class alone to pickle as "load ``uri`` from the registry", which the other
    process does once (:func:`_load_cached`). Modules of shared classes (pickled-format
    models) keep their own pickling. Checked by class, not by a trial ``pickle.dumps``, which
    would serialize every weight on every load.
    """
    cls = type(model)
    if not cls.__qualname__.endswith("<locals>.GraphModuleImpl"):  # never patch a shared class
        return
    cls.__reduce_ex__ = lambda self, protocol: (_load_cached, (uri, tracking_uri))  # type: ignore[assignment,method-assign]


@functools.lru_cache(maxsize=8)
def _load_cached(uri: str, tracking_uri: str | None) -> nn.Module:
    """``load_model`` once per process for a version URI (what an unpickled pt2 model is)."""
    return load_model(
        resolve_model_version(uri, tracking_uri=tracking_uri), tracking_uri=tracking_uri
    )


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
    if path.is_dir():
        files = sorted([*path.glob("*.parquet"), *path.glob("*.csv")])
        if len(files) != 1:
            raise DataResolutionError(
                f"{path} holds {len(files)} parquet/csv files, need exactly one"
            )
        path = files[0]
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path)
    raise DataResolutionError(f"training data must be .parquet or .csv, got {path.name!r}")


def _dataset_input_uri(
    mv: ModelVersionRef, tracking_uri: str | None
) -> tuple[str, int | None] | None:
    """(source URI, registered row count) of the training run's logged dataset, if any."""
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
    """Training data plus where it came from and the row count the registry recorded."""

    data: TrainingData
    frame: pd.DataFrame
    uri: str
    origin: str
    registered_rows: int | None
    label_column: str
    true_labels: np.ndarray | None = None


def load_training_data(
    mv: ModelVersionRef,
    *,
    data_uri: str | None = None,
    label_column: str | None = None,
    tracking_uri: str | None = None,
) -> ResolvedData:
    """Resolve and read the version's training data (explicit URI > tag > run dataset input).

    Raises:
        DataResolutionError: nothing resolvable, unreadable file, or no label column.
    """
    registered_rows: int | None = None
    if data_uri:
        uri, origin = data_uri, "explicit"
    elif mv.tags.get(TAG_TRAIN_DATA):
        uri, origin = mv.tags[TAG_TRAIN_DATA], f"tag {TAG_TRAIN_DATA}"
    else:
        found = _dataset_input_uri(mv, tracking_uri)
        if found is None:
            raise DataResolutionError(
                f"{mv.uri} has no resolvable training data: pass a data URI, set the "
                f"model-version tag {TAG_TRAIN_DATA!r}, or log the dataset with mlflow.log_input"
            )
        (uri, registered_rows), origin = found, "run dataset input"
    frame = _read_frame(_download(uri))
    label = label_column or mv.tags.get(TAG_LABEL_COLUMN) or "label"
    if label not in frame.columns:
        raise DataResolutionError(
            f"training data {uri!r} has no label column {label!r}; "
            f"columns: {list(frame.columns)[:10]}"
        )
    true_col = mv.tags.get(TAG_TRUE_LABEL_COLUMN)
    true_labels = None
    if true_col and true_col in frame.columns:
        true_labels = frame[true_col].to_numpy()
        frame = frame.drop(columns=[true_col])
    classes = json.loads(mv.tags[TAG_CLASSES]) if mv.tags.get(TAG_CLASSES) else None
    shape = mv.tags.get(TAG_IMAGE_SHAPE)
    image_shape = tuple(int(v) for v in shape.lower().split("x")) if shape else None
    data = TrainingData.from_frame(
        frame,
        label_column=label,
        classes=classes,
        image_shape=image_shape,  # type: ignore[arg-type]
        source_uri=uri,
        name=f"{mv.name}-v{mv.version}-train",
    )
    log.info("training data for %s: %s (%s), %d rows", mv.uri, uri, origin, len(data))
    return ResolvedData(data, frame, uri, origin, registered_rows, label, true_labels)


def check_data_fits(
    model: nn.Module,
    features: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    what: str = "training data",
) -> int:
    """Run the model on two rows; return its number of outputs (classes).

    Raises:
        DatasetMismatchError: the columns do not fit the model's input, or labels exceed its
            outputs.
    """
    x = torch.tensor(np.array(features[:2], dtype=np.float32))
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # any shape error from an arbitrary model
        raise DatasetMismatchError(
            f"{what} rows of shape {tuple(features.shape[1:])} do not fit the model: {e}"
        ) from e
    if out.ndim != 2:
        raise DatasetMismatchError(
            f"model output has shape {tuple(out.shape)}; expected (n, classes)"
        )
    n_out = int(out.shape[1])
    if labels is not None and len(labels) and int(np.max(labels)) >= n_out:
        raise DatasetMismatchError(
            f"{what} has label {int(np.max(labels))} but the model has only {n_out} outputs"
        )
    return n_out


def set_gate_tags(
    mv: ModelVersionRef, *, scan_id: int, verdict: str, reason: str, tracking_uri: str | None = None
) -> None:
    """Tag the version with ``infgate.scan_id``, ``infgate.gate`` and ``infgate.reason``."""
    c = client(tracking_uri)
    c.set_model_version_tag(mv.name, mv.version, TAG_SCAN_ID, str(scan_id))
    c.set_model_version_tag(mv.name, mv.version, TAG_GATE, verdict)
    c.set_model_version_tag(
        mv.name, mv.version, TAG_REASON, reason[:_MLFLOW_TAG_MAX] or "all checks passed"
    )


def log_scan_run(
    mv: ModelVersionRef,
    *,
    metrics: dict[str, float],
    params: dict[str, Any],
    artifact_dir: Path | None,
    tracking_uri: str | None = None,
) -> str:
    """Log a scan as its own MLflow run (in the training run's experiment); returns its id.

    The training run stays untouched; the scan run is linked both ways (run tags name the
    model version, the version gets ``infgate.scan_run_id``).
    """
    from mlflow.entities import Metric, Param

    c = client(tracking_uri)
    experiment_id = "0"
    if mv.run_id:
        experiment_id = c.get_run(mv.run_id).info.experiment_id
    run = c.create_run(
        experiment_id,
        run_name=f"infgate-scan-{mv.name}-v{mv.version}",
        tags={
            "infgate.model_name": mv.name,
            "infgate.model_version": mv.version,
            "infgate.training_run_id": mv.run_id or "",
            "mlflow.source.name": "infgate",
        },
    )
    rid = run.info.run_id
    flat = {k: str(v)[:500] for k, v in params.items()}
    ts = int(run.info.start_time)
    c.log_batch(
        rid,
        metrics=[
            Metric(k, float(v), ts, 0)
            for k, v in metrics.items()
            if v is not None and np.isfinite(v)
        ],
        params=[Param(k, v) for k, v in flat.items()],
    )
    if artifact_dir is not None and Path(artifact_dir).exists():
        c.log_artifacts(rid, str(artifact_dir), artifact_path="infgate")
    c.set_terminated(rid)
    c.set_model_version_tag(mv.name, mv.version, TAG_SCAN_RUN, rid)
    return str(rid)


def alias_version(name: str, alias: str, *, tracking_uri: str | None = None) -> str | None:
    """The version ``alias`` points to, or ``None``."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def set_alias(mv: ModelVersionRef, alias: str, *, tracking_uri: str | None = None) -> None:
    """Point ``alias`` at the version (callers check the gate first: see ``infgate.gate.core``)."""
    client(tracking_uri).set_registered_model_alias(mv.name, alias, mv.version)


def withdraw_alias(mv: ModelVersionRef, alias: str, *, tracking_uri: str | None = None) -> bool:
    """Remove ``alias`` if it points at this version; returns whether it did."""
    if alias_version(mv.name, alias, tracking_uri=tracking_uri) != mv.version:
        return False
    client(tracking_uri).delete_registered_model_alias(mv.name, alias)
    log.warning("removed alias %r from blocked version %s", alias, mv.uri)
    return True


def tracking_uri_from_env() -> str | None:
    """``MLFLOW_TRACKING_URI`` if set (infgate never invents a default besides MLflow's)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or None
