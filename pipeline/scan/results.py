"""Typed results the scan stages hand each other (never dicts keyed by another library).

``LoadedScan`` (load) -> ``Analysis`` (one curvature fit: the label-error ranking, the
explanations, the mismatch report) -> scan id (store) -> ``GateVerdict`` (gate) ->
``ReportOutcome`` (report) -> ``ScanResult`` (everything, returned by ``run_scan``, the flow
and ``scan_dataset``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from infgate.data.training import EvalData
    from infgate.detect import MismatchReport
    from infgate.gate.verdict import GateVerdict
    from infgate.registry import ModelVersionRef, ResolvedData
    from torch import nn

__all__ = ["Analysis", "CurvatureSummary", "LoadedScan", "ReportOutcome", "ScanResult"]


@dataclass(frozen=True)
class LoadedScan:
    """The load stage's output: what is scanned.

    Attributes:
        mv: the registry model version (``None`` for a registry-free ``scan_dataset``).
        model: the model in eval mode.
        train: the training data with its frame, URI and label column.
        eval_data: evaluation or production data for the mismatch test, if any.
        n_classes: the model's number of outputs.
        true_labels: known clean labels (benchmarks, the demo), for recall figures.
        weight_decay: the weight decay the training run logged, if it logged one.
        subject: a human name of what is scanned (``name vN`` or the dataset's name).
        eval_uri: where the evaluation data came from (an explicit URI or the version's
            ``infgate.eval_data`` tag), for the MLflow run's inputs.
    """

    mv: ModelVersionRef | None
    model: nn.Module
    train: ResolvedData
    eval_data: EvalData | None
    n_classes: int
    true_labels: np.ndarray | None = None
    weight_decay: float | None = None
    subject: str = ""
    eval_uri: str | None = None

    @property
    def eval_hash(self) -> str | None:
        """Content hash of the evaluation data (part of every cache key), or ``None``."""
        if self.eval_data is None:
            return None
        import hashlib

        e = self.eval_data
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(e.features).tobytes())
        h.update(str(e.features.shape).encode())
        if e.labels is not None:
            h.update(np.ascontiguousarray(e.labels).tobytes())
        h.update("\x1f".join(map(str, e.example_ids)).encode())
        return h.hexdigest()


@dataclass(frozen=True)
class CurvatureSummary:
    """The curvature the scan fitted once (and every consumer reused).

    Attributes:
        method: the back-end used (what ``auto`` resolved to).
        damping: the damping actually used.
        damping_source: ``"config"``, ``"training run weight_decay"`` or the back-end rule.
        n_params: parameters differentiated.
        choice: what ``auto`` chose and why (parameters covered, own blocks, left out).
        fit_seconds: time of the one fit.
    """

    method: str
    damping: float
    damping_source: str
    n_params: int
    choice: dict[str, Any] = field(default_factory=dict)
    fit_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "damping": float(self.damping),
            "damping_source": self.damping_source,
            "n_params": int(self.n_params),
            "choice": dict(self.choice),
            "fit_seconds": float(self.fit_seconds),
        }


@dataclass(frozen=True)
class Analysis:
    """The influence and detect stages' output, from one fitted curvature.

    Attributes:
        ranking: one row per training example, most suspicious first (``find_label_errors``).
        explanations: supporting/opposing training examples of the top suspects, or ``None``.
        mismatch: the train-vs-eval mismatch report, ``None`` without evaluation data.
        curvature: what was fitted.
        timings: seconds per step.
    """

    ranking: pd.DataFrame
    explanations: pd.DataFrame | None
    mismatch: MismatchReport | None
    curvature: CurvatureSummary
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_suspects(self) -> int:
        return int(self.ranking["is_suspect"].astype(bool).sum())


@dataclass(frozen=True)
class ReportOutcome:
    """Where the report went: files, metrics, the MLflow scan run."""

    directory: Path
    metrics: dict[str, float]
    files: tuple[Path, ...] = ()
    markdown: str = ""
    top_table: tuple[dict[str, Any], ...] = ()
    scan_run_id: str | None = None
    scan_run_url: str | None = None


@dataclass(frozen=True)
class ScanResult:
    """Everything one scan produced.

    Attributes:
        scan_id: the stored scan's id (``None`` when nothing was stored: ``scan_dataset``).
        subject: what was scanned (``name vN``).
        mv: the registry version (``None`` for ``scan_dataset``).
        verdict: the gate's verdict.
        analysis: ranking, explanations, mismatch, curvature.
        n_rows: training examples.
        queued: suspects put in the relabel queue by this scan.
        timings: seconds per stage.
        reused: a stored scan with the same version, data and config was reused.
        report: where the report went.
    """

    scan_id: int | None
    subject: str
    mv: ModelVersionRef | None
    verdict: GateVerdict
    analysis: Analysis
    n_rows: int
    queued: int
    timings: dict[str, float]
    reused: bool = False
    report: ReportOutcome | None = None

    @property
    def ranking(self) -> pd.DataFrame:
        return self.analysis.ranking

    @property
    def mismatch(self) -> MismatchReport | None:
        return self.analysis.mismatch

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (CLI ``--json``, the flow's result, logs)."""
        top = self.ranking[self.ranking["is_suspect"].astype(bool)].head(10)
        cols = [
            c
            for c in (
                "rank",
                "example_id",
                "score",
                "given_label",
                "suggested_label",
                "suggestion_confidence",
            )
            if c in top.columns
        ]
        mm = self.mismatch
        return {
            "scan_id": self.scan_id,
            "subject": self.subject,
            "model": self.mv.name if self.mv else None,
            "version": self.mv.version if self.mv else None,
            "verdict": self.verdict.verdict,
            "reasons": [c.to_dict() for c in self.verdict.reasons],
            "n_rows": self.n_rows,
            "n_suspects": self.analysis.n_suspects,
            "queued": self.queued,
            "reused": self.reused,
            "curvature": self.analysis.curvature.to_dict(),
            "mismatch": None
            if mm is None
            else {"p_value": float(mm.p_value), "flagged": bool(mm.flagged), "alpha": mm.alpha},
            "top_suspects": top[cols].to_dict(orient="records"),
            "report_dir": str(self.report.directory) if self.report else None,
            "scan_run_id": self.report.scan_run_id if self.report else None,
            "scan_run_url": self.report.scan_run_url if self.report else None,
            "timings": dict(self.timings),
        }
