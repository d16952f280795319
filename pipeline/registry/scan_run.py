"""A scan's MLflow run and its links to the model version it scanned.

The scan run (in the training run's experiment) carries what MLflow users look for:

* inputs: the training and evaluation datasets (``DatasetInput``, contexts ``training`` /
  ``evaluation``) and, in MLflow 3, the version's ``LoggedModel`` (``LoggedModelInput``);
* metrics with the same names for every version of a model (``n_suspects``,
  ``suspect_rate``, ``recall_at_10pct``, ``mismatch_p_value``...), so runs compare;
* the report folder as artifacts (``infgate/``), the full gate reason among them.

The version links back: tag ``infgate.scan_run_id`` and an ``infgate`` block in its
description (verdict, every failed check in full, a link to the run). The ``infgate.reason``
tag stays short (MLflow's tag box clips long values); the description holds the whole reason.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from infgate.errors import InvalidInputError

if TYPE_CHECKING:
    from infgate.registry.refs import ModelVersionRef

__all__ = [
    "INPUTS_FILE",
    "ScanDataset",
    "log_scan_run",
    "run_url",
    "set_gate_tags",
    "short_reason",
]

log = logging.getLogger(__name__)

TAG_SCAN_ID = "infgate.scan_id"
TAG_GATE = "infgate.gate"
TAG_REASON = "infgate.reason"
TAG_SCAN_RUN = "infgate.scan_run_id"
#: The report folder's file naming the datasets a scan read (logged as the run's inputs).
INPUTS_FILE = "inputs.json"
#: Longest ``infgate.reason`` tag value; the description keeps the full text.
REASON_TAG_MAX = 160
_BLOCK_START, _BLOCK_END = "<!-- infgate:begin -->", "<!-- infgate:end -->"
_RUN_LINE = "**Scan run:**"
Context = Literal["training", "evaluation"]


@dataclass(frozen=True)
class ScanDataset:
    """One dataset a scan read, as MLflow records a run input.

    Attributes:
        name: a short name shown in the run's "Datasets" box.
        source: where it was read from (a path or URI).
        digest: the content hash (infgate's, shortened to MLflow's 36 characters).
        context: ``training`` or ``evaluation``.
        n_rows: number of examples.
        columns: ``(name, MLflow type)`` per column (the dataset's schema), may be empty.
    """

    name: str
    source: str
    digest: str
    context: Context
    n_rows: int
    columns: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.context not in ("training", "evaluation"):
            raise InvalidInputError(
                f"dataset context must be 'training' or 'evaluation', got {self.context!r}"
            )
        if not self.name:
            raise InvalidInputError("dataset name is empty: name the dataset")
        if not isinstance(self.n_rows, int) or self.n_rows < 0:
            raise InvalidInputError(f"dataset n_rows must be an int >= 0, got {self.n_rows!r}")
        object.__setattr__(self, "digest", str(self.digest)[:36])
        object.__setattr__(self, "columns", tuple((str(n), str(t)) for n, t in self.columns))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "digest": self.digest,
            "context": self.context,
            "n_rows": self.n_rows,
            "columns": [list(c) for c in self.columns],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanDataset:
        return cls(
            name=str(d["name"]),
            source=str(d["source"]),
            digest=str(d["digest"]),
            context=d["context"],
            n_rows=int(d["n_rows"]),
            columns=tuple(tuple(c) for c in d.get("columns") or ()),  # type: ignore[misc]
        )

    def to_input(self) -> Any:
        """The MLflow ``DatasetInput`` (schema and row count included, context tagged)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        source_type, source = _source(self.source)
        schema = None
        if self.columns:
            spec = [{"type": t, "name": n, "required": True} for n, t in self.columns]
            schema = json.dumps({"mlflow_colspec": spec})
        profile = json.dumps({"num_rows": self.n_rows, "num_elements": self.n_rows})
        dataset = Dataset(self.name, self.digest, source_type, source, schema, profile)
        return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, self.context)])


def _source(uri: str) -> tuple[str, str]:
    """MLflow's ``(source_type, source JSON)`` for a data URI (local paths as ``local``)."""
    try:
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        src = resolve_dataset_source(uri)
        return src._get_source_type(), src.to_json()
    except Exception:  # an unrecognised scheme: recorded as given
        return "code", json.dumps({"uri": uri})


def read_inputs(directory: Path | None) -> list[ScanDataset]:
    """The datasets named by a report folder's :data:`INPUTS_FILE` (none without one)."""
    if directory is None or not (Path(directory) / INPUTS_FILE).is_file():
        return []
    raw = json.loads((Path(directory) / INPUTS_FILE).read_text())
    return [ScanDataset.from_dict(d) for d in raw.get("datasets", [])]


def short_reason(reason: str) -> str:
    """The ``infgate.reason`` tag: ``reason`` itself when short, else its first
    :data:`REASON_TAG_MAX` characters ending in a pointer to the full text."""
    reason = reason or "all checks passed"
    if len(reason) <= REASON_TAG_MAX:
        return reason
    tail = " … (full reason in the version description)"
    return reason[: REASON_TAG_MAX - len(tail)].rstrip(" ;,") + tail


def run_url(tracking_uri: str | None, experiment_id: str, run_id: str) -> str:
    """A link to the run: the MLflow UI page for an http(s) server, else ``runs:/<id>``."""
    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"runs:/{run_id}"


_BLOCK = re.compile(re.escape(_BLOCK_START) + r".*?" + re.escape(_BLOCK_END), re.S)


def _with_block(description: str | None, lines: list[str] | None, run_line: str | None) -> str:
    """``description`` with its infgate block rewritten (the user's text kept as is).

    Args:
        description: the version's current description.
        lines: the verdict lines, or ``None`` to keep the block's current ones.
        run_line: the scan-run link line, or ``None`` to keep the current one.
    """
    text = description or ""
    old = _BLOCK.search(text)
    inner = old.group(0).splitlines()[1:-1] if old else []
    old_run = [ln for ln in inner if ln.startswith(_RUN_LINE)]
    if lines is None:
        lines = [ln for ln in inner if not ln.startswith(_RUN_LINE)]
    block = "\n".join([_BLOCK_START, *lines, *([run_line] if run_line else old_run), _BLOCK_END])
    if old:
        return text[: old.start()] + block + text[old.end() :]
    return f"{text.rstrip()}\n\n{block}".lstrip()


def set_gate_tags(
    mv: ModelVersionRef, *, scan_id: int, verdict: str, reason: str, tracking_uri: str | None = None
) -> None:
    """Tag the version (``infgate.scan_id``, ``infgate.gate``, a short ``infgate.reason``) and
    write the verdict with the full reason into the infgate block of its description."""
    from infgate.registry.refs import client

    c = client(tracking_uri)
    c.set_model_version_tag(mv.name, mv.version, TAG_SCAN_ID, str(scan_id))
    c.set_model_version_tag(mv.name, mv.version, TAG_GATE, verdict)
    c.set_model_version_tag(mv.name, mv.version, TAG_REASON, short_reason(reason))
    reasons = [r.strip() for r in (reason or "").split("; ") if r.strip()]
    lines = [f"**infgate gate: {verdict.upper()}** (scan {scan_id})", ""]
    lines += [f"- {r}" for r in reasons] or ["- all checks passed"]
    lines.append("")
    current = c.get_model_version(mv.name, mv.version).description
    c.update_model_version(mv.name, mv.version, description=_with_block(current, lines, None))


def _link_version(c: Any, mv: ModelVersionRef, run_name: str, url: str, run_id: str) -> None:
    """Tag ``infgate.scan_run_id`` and put the run link in the description's infgate block."""
    c.set_model_version_tag(mv.name, mv.version, TAG_SCAN_RUN, run_id)
    current = c.get_model_version(mv.name, mv.version).description
    line = f"{_RUN_LINE} [{run_name}]({url}) (`runs:/{run_id}`)"
    c.update_model_version(mv.name, mv.version, description=_with_block(current, None, line))


_LOGGED_MODEL_URI = re.compile(r"^models:/(?P<id>m-[0-9a-f]+)/?$")


def _model_input(c: Any, mv: ModelVersionRef) -> list[Any]:
    """``[LoggedModelInput]`` for the version's MLflow 3 logged model, else ``[]``.

    The id is the version's ``model_id``, else the one its source names
    (``models:/m-<hex>``: MLflow 3.17 leaves ``model_id`` empty on versions it registered
    from a logged model); an id the tracking server does not know is left out.
    """
    from mlflow.entities import LoggedModelInput
    from mlflow.exceptions import MlflowException

    version = c.get_model_version(mv.name, mv.version)
    model_id = getattr(version, "model_id", None)
    if not model_id:
        m = _LOGGED_MODEL_URI.match(str(version.source or ""))
        model_id = m["id"] if m else None
    if not model_id:
        return []
    try:
        c.get_logged_model(model_id)
    except MlflowException:
        log.info("%s names logged model %s, which the server does not know", mv.uri, model_id)
        return []
    return [LoggedModelInput(model_id)]


def _as_logged(c: Any, mv: ModelVersionRef, ds: ScanDataset) -> Any:
    """``ds`` as a ``DatasetInput``; the training run's own entry (same name and digest, so
    MLflow shows one dataset) when that run logged the same source as training data."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if ds.context != "training" or not mv.run_id:
        return ds.to_input()
    try:
        logged = c.get_run(mv.run_id).inputs.dataset_inputs or []
    except MlflowException:
        return ds.to_input()
    for entry in logged:
        try:
            uri = json.loads(entry.dataset.source).get("uri", "")
        except (ValueError, AttributeError):
            continue
        if uri and (uri == ds.source or uri.removeprefix("file://") == ds.source):
            tags = [InputTag(MLFLOW_DATASET_CONTEXT, "training")]
            return DatasetInput(entry.dataset, tags=tags)
    return ds.to_input()


def log_scan_run(
    mv: ModelVersionRef,
    *,
    metrics: dict[str, float],
    params: dict[str, Any],
    artifact_dir: Path | None,
    tracking_uri: str | None = None,
    datasets: Sequence[ScanDataset] | None = None,
) -> str:
    """Log a scan as its own MLflow run (in the training run's experiment); returns its id.

    Args:
        mv: the scanned version.
        metrics: the scan's metrics (non-finite values are left out).
        params: flat params (as text, cut to MLflow's 500 characters).
        artifact_dir: the report folder, logged under ``infgate/``.
        tracking_uri: MLflow tracking/registry URI.
        datasets: the datasets read; default: the report folder's :data:`INPUTS_FILE`.

    The training run stays untouched. The run's inputs are the datasets and the version's
    logged model; the version gets ``infgate.scan_run_id`` and a link in its description.
    """
    from infgate.registry.refs import client
    from mlflow.entities import Metric, Param

    c = client(tracking_uri)
    experiment_id = c.get_run(mv.run_id).info.experiment_id if mv.run_id else "0"
    run_name = f"infgate-scan-{mv.name}-v{mv.version}"
    run = c.create_run(
        experiment_id,
        run_name=run_name,
        tags={
            "infgate.model_name": mv.name,
            "infgate.model_version": mv.version,
            "infgate.model_uri": mv.uri,
            "infgate.training_run_id": mv.run_id or "",
            "mlflow.source.name": "infgate",
            "mlflow.note.content": f"infgate scan of registered model version `{mv.uri}`",
        },
    )
    rid = str(run.info.run_id)
    ts = int(run.info.start_time)
    c.log_batch(
        rid,
        metrics=[
            Metric(k, float(v), ts, 0)
            for k, v in metrics.items()
            if v is not None and np.isfinite(v)
        ],
        params=[Param(k, str(v)[:500]) for k, v in params.items()],
    )
    inputs = list(datasets) if datasets is not None else read_inputs(artifact_dir)
    logged = [_as_logged(c, mv, d) for d in inputs]
    models = _model_input(c, mv)
    if logged or models:
        c.log_inputs(rid, datasets=logged or None, models=models or None)
    if artifact_dir is not None and Path(artifact_dir).exists():
        c.log_artifacts(rid, str(artifact_dir), artifact_path="infgate")
    c.set_terminated(rid)
    _link_version(c, mv, run_name, run_url(tracking_uri, experiment_id, rid), rid)
    return rid
