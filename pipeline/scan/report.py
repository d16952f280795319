"""A scan's report: metrics, the findings table, plots and a markdown summary.

The same files go to MLflow (scan run artifacts), Prefect (markdown + table artifacts) and
the terminal. Plots: self-influence score histogram (suspects vs the rest), a recall curve
(fraction of true label errors found vs fraction of data checked, Koh & Liang Fig. 6) when
the true labels are known, and the mismatch score distribution when there is eval data.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from infgate.detect import MismatchReport
    from infgate.gate import GateVerdict
    from infgate.scan.results import Analysis, LoadedScan

__all__ = ["ScanReport", "recall_curve", "summary_markdown", "write_report"]

log = logging.getLogger(__name__)

TOP_COLUMNS = [
    "rank",
    "example_id",
    "score",
    "given_label",
    "predicted_label",
    "suggested_label",
    "suggestion_confidence",
]


@dataclass(frozen=True)
class ScanReport:
    """Where the report files are and the metrics logged with them."""

    directory: Path
    metrics: dict[str, float]
    files: list[Path] = field(default_factory=list)
    markdown: str = ""
    top_table: list[dict[str, Any]] = field(default_factory=list)


def recall_curve(
    ranking_ids: list[str], error_ids: set[str], n_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of true label errors found after checking the top k examples, k = 0..n.

    Args:
        ranking_ids: example ids, most suspicious first (may cover fewer than ``n_rows``).
        error_ids: ids whose given label is wrong.
        n_rows: dataset size (x axis is k / n_rows).

    Returns:
        ``(fraction checked, fraction of errors found)``.
    """
    hits = np.array([i in error_ids for i in ranking_ids], dtype=float)
    found = np.concatenate([[0.0], np.cumsum(hits)]) / max(len(error_ids), 1)
    checked = np.arange(len(hits) + 1) / max(n_rows, 1)
    return checked, found


def summary_markdown(
    *,
    model: str,
    scan_id: int | None,
    n_rows: int,
    n_suspects: int,
    verdict: GateVerdict,
    mismatch: MismatchReport | None,
    top: pd.DataFrame,
    curvature: dict[str, Any] | None = None,
) -> str:
    """A short markdown summary: verdict, reasons, counts, the top suspects."""
    head = "BLOCKED" if not verdict.passed else "PASSED"
    lines = [
        f"# infgate scan {scan_id if scan_id is not None else '(not stored)'}: {model} — "
        f"gate {head}",
        "",
        f"- training examples: {n_rows:,}",
        f"- suspected label errors: {n_suspects:,} ({n_suspects / max(n_rows, 1):.1%})",
    ]
    if mismatch is not None:
        lines.append(
            f"- train vs eval mismatch: p = {float(mismatch.p_value):.3g} "
            f"({'flagged' if mismatch.flagged else 'not flagged'} at alpha {mismatch.alpha:g})"
        )
    if curvature:
        lines.append(
            f"- curvature: {curvature.get('method')} (damping {float(curvature['damping']):.3g}, "
            f"from {curvature.get('damping_source')}; {int(curvature.get('n_params', 0)):,} params)"
        )
        reason = (curvature.get("choice") or {}).get("reason")
        if reason:
            lines.append(f"- why: {reason}")
    lines += ["", "## Gate checks", ""]
    lines += [f"- {'✅' if c.success else '❌'} {c.message}" for c in verdict.checks]
    if len(top):
        lines += [
            "",
            "## Top suspects",
            "",
            top.to_markdown(index=False) if _has_tabulate() else top.to_string(index=False),
        ]
    return "\n".join(lines) + "\n"


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _plots(
    directory: Path, ranking: pd.DataFrame, loaded: LoadedScan, mismatch: MismatchReport | None
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: list[Path] = []
    scores = ranking["score"].astype(float).to_numpy()
    sus = ranking["is_suspect"].astype(bool).to_numpy()
    # fixed margins and pre-binned stairs: tight_layout and one patch per bar cost ~0.15 s
    # a figure, a fixed cost of every scan
    fig, ax = plt.subplots(figsize=(6, 3.5))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.15, top=0.96)
    bins = np.histogram_bin_edges(scores, bins=40)
    for mask, label in ((~sus, "not suspect"), (sus, "suspect")):
        counts, _ = np.histogram(scores[mask], bins=bins)
        ax.stairs(counts, bins, fill=True, alpha=0.7, label=label)
    ax.set_xlabel("score (higher = more likely mislabeled)")
    ax.set_ylabel("examples")
    ax.set_yscale("log")
    ax.legend()
    files.append(directory / "score_histogram.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    if loaded.true_labels is not None:
        data = loaded.train.data
        wrong = set(data.example_ids[np.asarray(loaded.true_labels) != data.labels].astype(str))
        x, y = recall_curve(ranking["example_id"].astype(str).tolist(), wrong, len(data))
        fig, ax = plt.subplots(figsize=(5, 4))
        fig.subplots_adjust(left=0.14, right=0.96, bottom=0.13, top=0.96)
        ax.plot(x, y, label="infgate ranking")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="random")
        ax.set_xlim(0, min(1.0, max(x.max(), 0.3)))
        ax.set_xlabel("fraction of training data checked")
        ax.set_ylabel("fraction of label errors found")
        ax.legend()
        files.append(directory / "recall_curve.png")
        fig.savefig(files[-1], dpi=100)
        plt.close(fig)
    if mismatch is not None and len(mismatch.example_scores):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(
            np.asarray(mismatch.example_scores, float),
            bins=40,
            alpha=0.8,
            label="eval examples",
        )
        ax.set_xlabel("mismatch score per evaluation example")
        ax.set_title(f"dataset-level p = {float(mismatch.p_value):.3g}")
        ax.legend()
        fig.tight_layout()
        files.append(directory / "mismatch_scores.png")
        fig.savefig(files[-1], dpi=100)
        plt.close(fig)
    return files


def write_report(
    directory: Path | None,
    *,
    loaded: LoadedScan,
    analysis: Analysis,
    verdict: GateVerdict,
    scan_id: int | None,
    top: int = 20,
) -> ScanReport:
    """Write findings CSV, plots, gate verdict JSON and summary markdown; compute metrics."""
    import json

    ranking, mismatch = analysis.ranking, analysis.mismatch
    directory = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="infgate-report-"))
    directory.mkdir(parents=True, exist_ok=True)
    n_rows = len(loaded.train.data)
    sus = ranking["is_suspect"].astype(bool)
    metrics: dict[str, float] = {
        "n_rows": float(n_rows),
        "n_suspects": float(sus.sum()),
        "suspect_rate": float(sus.sum()) / max(n_rows, 1),
        "gate_passed": float(verdict.passed),
        "gate_failed_checks": float(len(verdict.reasons)),
    }
    if mismatch is not None:
        metrics["mismatch_p_value"] = float(mismatch.p_value)
        metrics["mismatch_statistic"] = float(mismatch.statistic)
        metrics["mismatch_flagged_examples"] = float(np.sum(mismatch.example_flagged))
    if loaded.true_labels is not None:
        data = loaded.train.data
        wrong = set(data.example_ids[np.asarray(loaded.true_labels) != data.labels].astype(str))
        _, y = recall_curve(ranking["example_id"].astype(str).tolist(), wrong, n_rows)
        for frac in (0.05, 0.10, 0.20):
            k = min(round(frac * n_rows), len(y) - 1)
            metrics[f"recall_at_{int(frac * 100)}pct"] = float(y[k])
        metrics["n_true_label_errors"] = float(len(wrong))
    files: list[Path] = []
    findings_csv = directory / "findings.csv"
    ranking.to_csv(findings_csv, index=False)
    files.append(findings_csv)
    (directory / "gate_verdict.json").write_text(
        json.dumps(verdict.to_dict(), indent=2, default=str)
    )
    files.append(directory / "gate_verdict.json")
    try:
        files += _plots(directory, ranking, loaded, mismatch)
    except Exception:  # a plot must never sink a scan
        log.exception("could not draw the scan plots")
    head = ranking[ranking["is_suspect"].astype(bool)].head(top)
    head = head[[c for c in TOP_COLUMNS if c in head.columns]]
    md = summary_markdown(
        model=loaded.subject,
        scan_id=scan_id,
        n_rows=n_rows,
        n_suspects=int(sus.sum()),
        verdict=verdict,
        mismatch=mismatch,
        top=head,
        curvature=analysis.curvature.to_dict(),
    )
    (directory / "summary.md").write_text(md)
    files.append(directory / "summary.md")
    records = json.loads(head.to_json(orient="records"))
    return ScanReport(directory, metrics, files, md, records)
