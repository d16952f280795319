"""The ``infgate`` MLflow model evaluator."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from infgate.errors import InvalidInputError
from mlflow.models.evaluation.base import EvaluationResult, ModelEvaluator
from torch import nn

__all__ = ["InfgateEvaluator"]

log = logging.getLogger(__name__)


def _torch_model(model: Any) -> nn.Module:
    raw = model.get_raw_model() if hasattr(model, "get_raw_model") else model
    if not isinstance(raw, nn.Module):
        raise InvalidInputError(
            f"the infgate evaluator needs a PyTorch model, got {type(raw).__name__}"
        )
    return raw


class InfgateEvaluator(ModelEvaluator):
    """Scans the evaluation dataset (features + targets) for label errors.

    ``evaluator_config`` keys (all optional): ``damping`` (the model's weight decay),
    ``method`` (influence back-end), ``max_suspect_rate`` and other gate thresholds
    (see ``pipeline/gate_defaults.yaml``), ``image_shape``.
    """

    @classmethod
    def can_evaluate(
        cls, *, model_type: str, evaluator_config: dict[str, Any], **kwargs: Any
    ) -> bool:
        """Classifiers only (influence needs a per-example loss over class logits)."""
        return model_type == "classifier"

    def evaluate(  # type: ignore[override]
        self,
        *,
        model_type: str,
        dataset: Any,
        run_id: str,
        evaluator_config: dict[str, Any],
        model: Any = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        """Scan ``dataset`` with the model (:func:`infgate.scan.scan_dataset`: the same
        stages as a registry scan, nothing stored); log metrics and the report to ``run_id``.

        ``evaluator_config`` (all optional): ``config`` (a ScanConfig dict), ``method``,
        ``damping`` (the model's weight decay), ``params``, the gate thresholds
        (``max_suspect_rate``, ``high_confidence``, ``max_unreviewed_high_confidence``),
        ``image_shape``, ``model_name``.
        """
        from infgate.config import ScanConfig
        from infgate.data.training import TrainingData
        from infgate.scan import scan_dataset
        from mlflow import MlflowClient

        if model is None:
            raise InvalidInputError("the infgate evaluator needs the model, not only predictions")
        if not dataset.has_targets:
            raise InvalidInputError("the infgate evaluator needs targets (pass targets=...)")
        cfg = dict(evaluator_config or {})
        torch_model = _torch_model(model)
        features = pd.DataFrame(dataset.features_data)
        frame = features.copy()
        frame.insert(0, "example_id", [str(i) for i in range(len(frame))])
        frame["label"] = np.asarray(dataset.labels_data).astype(np.int64)
        shape = cfg.get("image_shape")
        data = TrainingData.from_frame(
            frame,
            image_shape=tuple(shape) if shape else None,
            name=str(cfg.get("model_name", "evaluation dataset")),  # type: ignore[arg-type]
        )
        gate_keys = ("max_suspect_rate", "high_confidence", "max_unreviewed_high_confidence")
        config = ScanConfig.from_dict(cfg.get("config") or {}).with_overrides(
            **{
                "influence.method": cfg.get("method"),
                "influence.damping": cfg.get("damping"),
                "influence.params": cfg.get("params"),
                "detect.explain_top": cfg.get("explain_top", 0),
                "detect.enqueue": False,
                "report.log_to_mlflow": False,
                **{f"gate.{k}": cfg.get(k) for k in gate_keys},
            }
        )
        out = Path(tempfile.mkdtemp(prefix="infgate-eval-"))
        config = config.with_overrides(**{"report.directory": str(out)})
        result = scan_dataset(torch_model, data, config=config, name=data.name)
        assert result.report is not None
        metrics = {f"infgate_{k}": float(v) for k, v in result.report.metrics.items()}
        client = MlflowClient()
        for k, v in metrics.items():
            client.log_metric(run_id, k, v)
        client.log_artifacts(run_id, str(out), artifact_path="infgate")
        artifacts = _artifacts(run_id, result.report.files)
        log.info(
            "infgate evaluator: %d suspects, gate %s",
            result.analysis.n_suspects,
            result.verdict.verdict,
        )
        return EvaluationResult(metrics=metrics, artifacts=artifacts, run_id=run_id)


def _artifacts(run_id: str, files: tuple[Path, ...]) -> dict[str, Any]:
    """The logged report files as MLflow evaluation artifacts (``EvaluationResult.artifacts``)."""
    from mlflow.models.evaluation.artifacts import (
        ImageEvaluationArtifact,
        JsonEvaluationArtifact,
        ParquetEvaluationArtifact,
        TextEvaluationArtifact,
    )

    kinds = {
        ".png": ImageEvaluationArtifact,
        ".json": JsonEvaluationArtifact,
        ".parquet": ParquetEvaluationArtifact,
    }
    out: dict[str, Any] = {}
    for f in files:
        cls: Any = kinds.get(f.suffix, TextEvaluationArtifact)
        artifact = cls(uri=f"runs:/{run_id}/infgate/{f.name}")
        try:
            artifact._load(str(f))
        except Exception:  # an unreadable file is still listed by its URI
            log.debug("could not load %s for the evaluation result", f)
        out[f"infgate_{f.stem}"] = artifact
    return out
