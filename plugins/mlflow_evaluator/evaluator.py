"""The ``infgate`` MLflow model evaluator."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
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
        """Run the influence stage, detection, and the gate on ``dataset``; log to ``run_id``."""
        from infgate.config import InfluenceConfig
        from infgate.data.training import TrainingData
        from infgate.gate.core import GateInputs, load_gate_config, run_gate
        from infgate.registry.core import ModelVersionRef, ResolvedData
        from infgate.scan.report import write_report
        from infgate.scan.stages import LoadedScan, ScanOptions, influence_stage
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
            name="evaluation",  # type: ignore[arg-type]
        )
        mv = ModelVersionRef(name=str(cfg.get("model_name", "evaluated-model")), version="eval")
        with torch.no_grad():
            with_logits = torch_model(torch.as_tensor(data.features[:2]))
        loaded = LoadedScan(
            mv=mv,
            model=torch_model,
            train=ResolvedData(data, frame, "mlflow.evaluate", "evaluation dataset", None, "label"),
            eval_data=None,
            n_classes=int(with_logits.shape[1]),
        )
        options = ScanOptions(
            influence=InfluenceConfig(
                method=cfg.get("method", "exact"), damping=cfg.get("damping")
            ),
            explain_top=0,
            enqueue=False,
        )
        ranking, _, _ = influence_stage(loaded, options)
        gate_cfg = load_gate_config(
            **{
                k: cfg[k]
                for k in ("max_suspect_rate", "high_confidence", "max_unreviewed_high_confidence")
                if k in cfg
            }
        )
        verdict = run_gate(
            GateInputs(
                frame,
                "label",
                [c for c in frame.columns if c not in {"example_id", "label"}],
                loaded.n_classes,
                ranking,
            ),
            gate_cfg,
        )
        out = Path(tempfile.mkdtemp(prefix="infgate-eval-"))
        report = write_report(
            out, loaded=loaded, ranking=ranking, mismatch=None, verdict=verdict, scan_id=0
        )
        metrics = {f"infgate_{k}": v for k, v in report.metrics.items()}
        client = MlflowClient()
        for k, v in metrics.items():
            client.log_metric(run_id, k, v)
        client.log_artifacts(run_id, str(out), artifact_path="infgate")
        artifacts: dict[str, Any] = {}
        log.info(
            "infgate evaluator: %d suspects, gate %s",
            int(report.metrics["n_suspects"]),
            verdict.verdict,
        )
        return EvaluationResult(metrics=metrics, artifacts=artifacts, run_id=run_id)
