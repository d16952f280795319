"""Corrected dataset versions: decided labels applied, invalid examples dropped, written
as parquet, recorded in the store and (when MLflow is configured) logged as a dataset input.

The scanned file is read back with the column plan the scan stored with its dataset version
(:func:`scanned_dataset`), and the corrected version keeps the file's own layout: every
column (metadata, encoded images, ragged token lists, true labels) as stored, only the label
column changed and the dropped rows gone, so the team's training code reads it unchanged."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from infgate.data.columns import ColumnPlan
from infgate.data.readers import read_table
from infgate.data.training import TrainingData
from infgate.errors import DatasetMismatchError, InvalidInputError
from infgate.review.decisions import check_id, label_index
from infgate.settings import Settings
from infgate.store.models import DatasetVersion, Finding, QueueItem
from infgate.store.store import Store
from sqlalchemy import select

__all__ = ["AppliedVersion", "ScannedDataset", "apply_decisions", "scanned_dataset"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppliedVersion:
    """The corrected dataset version written by :func:`apply_decisions`."""

    data: TrainingData
    dataset_version_id: int
    content_hash: str
    path: Path | None
    n_relabeled: int
    n_dropped: int
    n_kept: int
    mlflow_run_id: str | None


@dataclass(frozen=True)
class ScannedDataset:
    """A scanned file read back: the data as the scan decoded it, the file's own table
    (rows in the same order) and the plan that decoded it (``None``: default rules)."""

    data: TrainingData
    table: pa.Table
    plan: ColumnPlan | None


def scanned_dataset(store: Store, scan_id: int, path: str | Path) -> ScannedDataset:
    """Read ``path`` the way scan ``scan_id`` read its training data: with the column plan
    stored with the scan's dataset version (feature columns, image decoding, token padding),
    else (versions stored before plans were kept) the default column rules.

    Raises:
        DataResolutionError / InvalidInputError: the file cannot be read with that plan.
    """
    check_id(scan_id, "scan id")
    info = store.get_scan(scan_id)
    table = read_table(path)
    plan = ColumnPlan.from_dict(info.columns) if info.columns else None
    if plan is not None:
        data = TrainingData.from_table(
            table,
            plan,
            classes=info.classes,
            image_shape=info.image_shape,
            source_uri=str(path),
        )
    else:
        data = TrainingData.from_frame(
            table.to_pandas(),
            classes=info.classes,
            image_shape=info.image_shape,
            source_uri=str(path),
        )
    return ScannedDataset(data, table, plan)


def _corrected_table(
    source: pa.Table, label_column: str, labels: np.ndarray, keep: np.ndarray, names: Any
) -> pa.Table:
    """``source`` with ``label_column`` set to ``labels`` (as class names when ``names``)
    and the rows ``keep`` is False for dropped; every other column as stored."""
    if label_column not in source.column_names:
        raise DatasetMismatchError(f"the dataset file has no label column {label_column!r}")
    column = source.column(label_column)
    old = column.type
    if names is not None and pa.types.is_dictionary(old):  # a categorical: same categories
        dictionary = [str(v) for v in column.combine_chunks().dictionary.to_pylist()]
        dictionary += [str(c) for c in names if str(c) not in dictionary]
        where = {c: i for i, c in enumerate(dictionary)}
        index = [where[str(names[int(k)])] for k in labels]
        values = pa.DictionaryArray.from_arrays(
            pa.array(index, type=old.index_type), pa.array(dictionary, type=old.value_type)
        )
    elif names is not None:
        values = pa.array(np.asarray(names, dtype=object)[labels].tolist(), type=pa.string())
        if pa.types.is_large_string(old):
            values = values.cast(old)
    else:
        values = pa.array(labels, type=old if pa.types.is_integer(old) else pa.int64())
    table = source.set_column(source.column_names.index(label_column), label_column, values)
    # pandas' index metadata would describe the rows before dropping: leave it out
    return table.filter(pa.array(keep)).replace_schema_metadata(None)


def apply_decisions(
    store: Store,
    dataset: TrainingData | ScannedDataset,
    *,
    scan_id: int,
    out_path: str | Path | None = None,
    tracking_uri: str | None = None,
    experiment: str = "infgate-relabel",
    note: str | None = None,
) -> AppliedVersion:
    """Apply the scan's resolved decisions to ``dataset`` and record the new version.

    Args:
        store: the store.
        dataset: the scanned dataset (its content hash must match the scan's): the file
            read back by :func:`scanned_dataset` (the corrected version keeps its layout),
            or a :class:`TrainingData` (written as ``example_id``, features, ``label``).
        scan_id: scan whose resolved queue items to apply.
        out_path: parquet file to write; ``None`` keeps the version in memory and in the
            store only.
        tracking_uri: MLflow tracking URI; ``None`` uses ``$MLFLOW_TRACKING_URI`` and skips
            MLflow when that is unset too.
        experiment: MLflow experiment for the logging run.
        note: free text kept with the dataset version.

    Returns:
        The corrected version (data, store id, counts, MLflow run id).

    Raises:
        DatasetMismatchError: ``dataset`` is not the scanned dataset version.
        InvalidInputError: a decided label is not a class of the model (checked against
            the scan's output count, else the class names); nothing is written.
    """
    check_id(scan_id, "scan id")
    source = dataset if isinstance(dataset, ScannedDataset) else None
    dataset = source.data if source is not None else dataset  # type: ignore[union-attr]
    assert isinstance(dataset, TrainingData)
    scan = store.get_scan(scan_id)
    if dataset.content_hash != scan.dataset_hash:
        raise DatasetMismatchError(
            f"dataset has content hash {dataset.content_hash[:12]}… but scan {scan_id} was run on "
            f"{scan.dataset_hash[:12]}…; pass the dataset version the scan saw"
        )
    with store.session() as s:
        decided = s.execute(
            select(QueueItem.id, Finding.example_id, QueueItem.final_action, QueueItem.final_label)
            .join(Finding, QueueItem.finding_id == Finding.id)
            .where(QueueItem.scan_id == scan_id, QueueItem.state == "done")
        ).all()
    classes = dataset.classes or (tuple(scan.classes) if scan.classes else None)
    position = {str(e): i for i, e in enumerate(dataset.example_ids)}
    labels = dataset.labels.copy()
    keep = np.ones(len(dataset), bool)
    n_relabeled = n_kept = 0
    for item_id, example_id, action, label in decided:
        if example_id not in position:
            raise DatasetMismatchError(f"decided example {example_id!r} is not in the dataset")
        i = position[example_id]
        if action == "invalid":
            keep[i] = False
        elif action == "relabel" and label is not None:
            try:
                new = label_index(label, list(classes) if classes else None, scan.n_outputs)
            except InvalidInputError as exc:
                raise InvalidInputError(
                    f"queue item {item_id} decided {label!r} for example {example_id!r}, "
                    f"which cannot be applied: {exc}"
                ) from None
            n_relabeled += int(new != labels[i])
            labels[i] = new
        else:
            n_kept += 1
    corrected = dataset.with_labels(labels, keep=keep)
    path = Path(out_path) if out_path is not None else None
    if source is not None:
        label_column = source.plan.label_column if source.plan is not None else "label"
        names = classes if dataset.label_names and classes else None
        table = _corrected_table(source.table, label_column, labels, keep, names)
        frame = table.to_pandas()
    else:
        label_column, table = "label", None
        frame = corrected.to_frame()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        if table is not None:
            pq.write_table(table, tmp)
        else:
            frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)  # readers never see a half-written file
    n_dropped = int((~keep).sum())
    run_id = None
    uri = tracking_uri or Settings.from_env().tracking_uri
    if uri:
        try:
            run_id = _log_to_mlflow(
                uri,
                experiment,
                frame,
                path,
                scan_id,
                scan.dataset_hash,
                n_relabeled,
                n_dropped,
                label_column,
            )
        except Exception:
            if path is not None:
                path.unlink(missing_ok=True)
            raise
    with store.session() as s:
        dv = s.scalar(
            select(DatasetVersion).where(DatasetVersion.content_hash == corrected.content_hash)
        )
        if dv is not None and dv.id == scan.dataset_version_id:
            # no decision changes the data: the scanned version itself, left as it is (not
            # its own parent, its source still the file the scan read)
            log.info("the decisions of scan %d leave its dataset version unchanged", scan_id)
            return AppliedVersion(
                corrected,
                dv.id,
                corrected.content_hash,
                path,
                n_relabeled,
                n_dropped,
                n_kept,
                run_id,
            )
        if dv is None:
            dv = DatasetVersion(content_hash=corrected.content_hash, n_rows=len(corrected))
            s.add(dv)
        dv.source_uri = str(path) if path is not None else dv.source_uri
        dv.classes = list(classes) if classes else None
        dv.image_shape = list(dataset.image_shape) if dataset.image_shape else None
        dv.feature_names = list(dataset.feature_names) if dataset.feature_names else None
        if source is not None and source.plan is not None:
            dv.columns = source.plan.to_dict()
        dv.parent_id = scan.dataset_version_id
        dv.note = note or f"decisions of scan {scan_id} applied"
        dv.mlflow_run_id = run_id or dv.mlflow_run_id
        s.flush()
        dv_id = dv.id
    log.info(
        "corrected dataset version %d: %d relabeled, %d dropped", dv_id, n_relabeled, n_dropped
    )
    return AppliedVersion(
        corrected, dv_id, corrected.content_hash, path, n_relabeled, n_dropped, n_kept, run_id
    )


def _log_to_mlflow(
    uri: str,
    experiment: str,
    frame: object,
    path: Path | None,
    scan_id: int,
    parent_hash: str,
    n_relabeled: int,
    n_dropped: int,
    label_column: str = "label",
) -> str:
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=f"relabel-scan-{scan_id}") as run:
            name = f"corrected-scan-{scan_id}"
            if path is not None:
                dataset = from_pandas(
                    frame,  # type: ignore[arg-type]
                    source=str(path.resolve()),
                    targets=label_column,
                    name=name,
                )
            else:
                dataset = from_pandas(frame, targets=label_column, name=name)  # type: ignore[arg-type]
            mlflow.log_input(dataset, context="training")
            mlflow.log_params(
                {
                    "scan_id": scan_id,
                    "parent_dataset_hash": parent_hash,
                    "n_relabeled": n_relabeled,
                    "n_dropped": n_dropped,
                }
            )
            mlflow.set_tag("infgate.kind", "corrected_dataset")
            return str(run.info.run_id)
    finally:
        mlflow.set_tracking_uri(previous)
