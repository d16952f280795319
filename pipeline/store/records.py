"""``ScanRecord``: everything one scan produced, in the shape the store writes in one go."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from infgate.config import config_hash
from infgate.errors import InvalidInputError

__all__ = ["FINDING_COLUMNS", "FINDING_KINDS", "ScanInfo", "ScanRecord", "config_hash"]

FINDING_KINDS = ("label_error", "domain_mismatch")
#: Columns every findings frame must have (``find_label_errors`` output plus ``kind``).
FINDING_COLUMNS = ("example_id", "score", "rank", "kind")
_SCAN_STATUSES = ("running", "completed", "failed")
_MAX_OUTPUTS = 2**31 - 1


@dataclass(frozen=True)
class ScanRecord:
    """One scan's results, written by :meth:`infgate.store.Store.record_scan` in one transaction.

    Attributes:
        model_name: registered model name in MLflow.
        model_version: registry version (string, e.g. ``"3"``).
        run_id: MLflow run that produced the model, when known.
        dataset_hash: ``TrainingData.content_hash`` of the scanned data.
        dataset_uri: where the data came from (a parquet path lets ``queue apply`` reload it).
        n_rows: number of training examples scanned.
        classes: class names (index = label), ``None`` for ``"0".."C-1"``.
        config: the scan options (JSON-friendly); hashed to identify re-runs.
        method: curvature back-end name.
        damping: lambda used.
        timings: stage timings in seconds.
        findings: ``find_label_errors`` columns plus ``kind``. Optional extra columns:
            ``features`` (one list of floats per row, so the review page can show the example),
            ``supporting`` / ``opposing`` (lists of ``{"train_example_id", "influence"}``).
        mismatch: ``MismatchReport.to_dict()`` or ``None``.
        status: ``"completed"`` (default), ``"running"`` or ``"failed"``.
        image_shape: ``(h, w)`` when each example is an image (the page draws a picture).
        feature_names: column names of tabular examples (the page draws a table).
        explanations: ``explain()`` output (``example_id, train_example_id, influence, role``);
            merged into the findings' supporting/opposing lists.
        n_outputs: the model's output count (classes it predicts); every label that enters
            the queue later is checked against it. ``None`` = unknown (class names decide).
        curvature: a JSON-friendly summary of the fitted curvature (back-end, damping, ...).
        columns: how the data file was decoded (``ColumnPlan.to_dict()``), kept with the
            dataset version so ``queue apply`` reads the file the same way.
    """

    model_name: str
    model_version: str
    run_id: str | None
    dataset_hash: str
    dataset_uri: str | None
    n_rows: int
    classes: list[str] | None
    config: dict[str, Any]
    method: str
    damping: float
    timings: dict[str, float]
    findings: pd.DataFrame
    mismatch: dict[str, Any] | None
    status: str = "completed"
    image_shape: tuple[int, int] | None = None
    feature_names: list[str] | None = None
    explanations: pd.DataFrame | None = field(default=None)
    n_outputs: int | None = None
    curvature: dict[str, Any] | None = None
    columns: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("model_name", "model_version", "dataset_hash", "method"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise InvalidInputError(
                    f"ScanRecord.{name} must be a non-empty string, got {value!r}"
                )
        if not isinstance(self.n_rows, int | np.integer) or self.n_rows < 0:
            raise InvalidInputError(f"ScanRecord.n_rows must be an int >= 0, got {self.n_rows!r}")
        if not isinstance(self.damping, int | float) or not math.isfinite(self.damping):
            raise InvalidInputError(
                f"ScanRecord.damping must be a finite number, got {self.damping!r}"
            )
        if self.status not in _SCAN_STATUSES:
            raise InvalidInputError(
                f"ScanRecord.status must be one of {_SCAN_STATUSES}, got {self.status!r}"
            )
        if not isinstance(self.findings, pd.DataFrame):
            raise InvalidInputError(
                "ScanRecord.findings must be a pandas DataFrame, got "
                f"{type(self.findings).__name__}"
            )
        missing = [c for c in FINDING_COLUMNS if c not in self.findings.columns]
        if missing:
            raise InvalidInputError(
                f"ScanRecord.findings lacks columns {missing}; it has {list(self.findings.columns)}"
            )
        bad_kinds = sorted(set(map(str, self.findings["kind"])) - set(FINDING_KINDS))
        if bad_kinds:
            raise InvalidInputError(
                f"ScanRecord.findings has unknown kind(s) {bad_kinds}; expected {FINDING_KINDS}"
            )
        dup = self.findings.duplicated(subset=["kind", "example_id"])
        if dup.any():
            first = self.findings.loc[dup, "example_id"].head(3).tolist()
            raise InvalidInputError(f"ScanRecord.findings repeats example_id(s) {first} per kind")
        scores = pd.to_numeric(self.findings["score"], errors="coerce").to_numpy(float)
        if len(scores) and not np.isfinite(scores).all():
            raise InvalidInputError("ScanRecord.findings has NaN, inf or non-numeric scores")
        if self.n_outputs is not None:
            if (
                isinstance(self.n_outputs, bool)
                or not isinstance(self.n_outputs, int | np.integer)
                or not 1 <= int(self.n_outputs) <= _MAX_OUTPUTS
            ):
                raise InvalidInputError(
                    f"ScanRecord.n_outputs must be None or an int in [1, {_MAX_OUTPUTS}], "
                    f"got {self.n_outputs!r}"
                )
            object.__setattr__(self, "n_outputs", int(self.n_outputs))
        if self.curvature is not None:
            if not isinstance(self.curvature, dict):
                raise InvalidInputError(
                    "ScanRecord.curvature must be None or a dict, got "
                    f"{type(self.curvature).__name__}"
                )
            object.__setattr__(self, "curvature", dict(self.curvature))
        if self.classes is not None:
            object.__setattr__(self, "classes", [str(c) for c in self.classes])
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(int(v) for v in self.image_shape))
        object.__setattr__(self, "model_version", str(self.model_version))
        object.__setattr__(self, "config", dict(self.config))

    @property
    def config_hash(self) -> str:
        """Hash of the config's ``identity`` part (what the scores depend on; the whole
        ``config`` when it has none); model version + dataset hash + this identify a scan."""
        return config_hash(self.config.get("identity", self.config))

    def class_name(self, label: Any) -> str | None:
        """A label (class index or name) as the class name the store keeps."""
        if label is None or (isinstance(label, float) and math.isnan(label)):
            return None
        if isinstance(label, float | np.floating) and float(label).is_integer():
            label = int(label)
        if self.classes is not None and isinstance(label, int | np.integer):
            idx = int(label)
            if not 0 <= idx < len(self.classes):
                raise InvalidInputError(
                    f"label index {idx} is outside the {len(self.classes)} classes {self.classes}"
                )
            return self.classes[idx]
        return str(label)


@dataclass(frozen=True)
class ScanInfo:
    """A stored scan, as :meth:`Store.get_scan` returns it."""

    id: int
    model_name: str
    model_version: str
    run_id: str | None
    dataset_version_id: int
    dataset_hash: str
    dataset_uri: str | None
    n_rows: int
    classes: list[str] | None
    image_shape: tuple[int, int] | None
    feature_names: list[str] | None
    config: dict[str, Any]
    config_hash: str
    method: str
    damping: float
    timings: dict[str, Any]
    status: str
    n_runs: int
    n_findings: int
    n_suspects: int
    mismatch: dict[str, Any] | None
    gate: dict[str, Any] | None
    created_at: dt.datetime
    updated_at: dt.datetime
    n_outputs: int | None = None
    curvature: dict[str, Any] | None = None
    columns: dict[str, Any] | None = None
