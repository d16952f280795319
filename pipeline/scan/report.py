"""A scan's report: metrics, the findings table, figures, ``summary.md`` and ``report.html``.

The same folder goes to MLflow (scan run artifacts, with ``inputs.json`` naming the datasets
read, logged as the run's inputs), Prefect (markdown + table artifacts) and the terminal.
Figures (:mod:`infgate.scan.report_plots`): the ranking score and self-influence
distributions (suspects vs the rest, log x when heavy-tailed), a recall curve (fraction of
true label errors found vs fraction of data checked, Koh & Liang Fig. 6) when the true labels
are known, and the mismatch scores with evaluation data. ``report.html``
(:mod:`infgate.scan.report_html`) is one self-contained page with all of it.
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
    from infgate.registry.scan_run import ScanDataset
    from infgate.scan.results import Analysis, LoadedScan

from infgate.scan.report_plots import recall_curve

__all__ = [
    "ScanReport",
    "markdown_table",
    "recall_curve",
    "scan_datasets",
    "summary_markdown",
    "write_report",
]

log = logging.getLogger(__name__)

TOP_COLUMNS = [
    "rank",
    "example_id",
    "score",
    "given_label",
    "predicted_label",
    "suggested_label",
    "suggestion_confidence",
    "self_influence",
]


@dataclass(frozen=True)
class ScanReport:
    """Where the report files are and the metrics logged with them."""

    directory: Path
    metrics: dict[str, float]
    files: list[Path] = field(default_factory=list)
    markdown: str = ""
    top_table: list[dict[str, Any]] = field(default_factory=list)


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a GitHub-flavoured Markdown table (``|`` in values escaped)."""

    def cell(v: Any) -> str:
        if isinstance(v, float | np.floating):
            v = f"{float(v):.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)


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
    html_report: Path | None = None,
    noise: dict[str, Any] | None = None,
) -> str:
    """A short Markdown summary: verdict, counts, the label-noise model behind the count
    (``noise``: the ranking's ``attrs``), every gate check and the top suspects as tables,
    and where the HTML report is."""
    head = "BLOCKED" if not verdict.passed else "PASSED"
    lines = [
        f"# infgate scan {scan_id if scan_id is not None else '(not stored)'}: {model} — "
        f"gate {head}",
        "",
        f"- training examples: {n_rows:,}",
        f"- suspected label errors: {n_suspects:,} ({n_suspects / max(n_rows, 1):.1%})",
    ]
    if noise and noise.get("expected_errors") is not None:
        rows = int(noise.get("noise_calibration_rows") or 0)
        source = (
            f"calibrated on {rows:,} labelled evaluation rows"
            if noise.get("noise_calibration") == "eval"
            else "fitted on the training labels alone"
        )
        posterior = noise.get("noise_posterior")
        if posterior in ("neighbours", "both"):
            source += (
                "; clean posterior from each row's nearest evaluation rows"
                if posterior == "neighbours"
                else "; clean posterior from the model's leave-one-out outputs stacked with "
                "each row's nearest evaluation rows"
            )
            right = noise.get("neighbour_accuracy")
            if right is not None:
                source += f", whose vote is right on {float(right):.0%} of the evaluation rows"
        interval = noise.get("expected_errors_interval")
        spread = (
            f" ({float(noise.get('expected_errors_interval_level') or 0.9):.0%} bootstrap "
            f"interval {int(interval[0]):,}-{int(interval[1]):,})"
            if interval is not None
            else ""
        )
        lines.append(
            f"- label-noise model: {float(noise['expected_errors']):.1f} expected label errors"
            f"{spread}, P(any label wrong) {float(noise.get('noise_probability', 1.0)):.3g} "
            f"({source})"
        )
        rule = noise.get("ranking_rule")
        if rule == "evidence":
            right = noise.get("neighbour_accuracy")
            lines.append(
                "- ranking: the filtered model's posterior times the calibrated vote of each "
                "row's nearest labelled evaluation rows"
                + (f" (right on {float(right):.0%} of them)" if right is not None else "")
            )
        elif rule is not None:
            lines.append(f"- ranking: {rule}")
        bad = float(noise.get("loo_leverage_violation_rate") or 0.0)
        if bad > 0.01 and posterior != "neighbours":
            lines.append(
                f"- ⚠ leave-one-out leverage >= 1 on {bad:.0%} of the rows: the curvature "
                "under-represents them, so the suspect count and confidence are unreliable "
                "on this model (the ranking is not affected)"
            )
        margin = noise.get("noise_diagonal_margin")
        if margin is not None and float(margin) <= 0.0:
            lines.append(
                f"- ⚠ the label-noise channel is not diagonally dominant (margin "
                f"{float(margin):.3g}): it says some class is more often mislabelled than "
                "labelled, so the suspect count is not an estimate of the label errors (a weak "
                "model, or leave-one-out steps the curvature overshoots; the ranking is not "
                "affected)"
            )
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
    if html_report is not None:
        lines.append(
            f"- full report: [{html_report.name}]({html_report.resolve().as_uri()}) "
            f"(`{html_report.resolve()}`; also in the MLflow scan run's artifacts)"
        )
    checks = pd.DataFrame(
        [
            {
                "result": "✅ held" if c.success else "❌ failed",
                "check": c.name,
                "observed": fmt_observed(c.observed),
                "allowed": c.allowed or "—",
                "why": c.message,
            }
            for c in verdict.checks
        ],
        columns=["result", "check", "observed", "allowed", "why"],
    )
    lines += ["", "## Gate checks", "", markdown_table(checks)]
    if len(top):
        lines += ["", "## Top suspects", "", "Ranking score: higher = more likely mislabeled.", ""]
        lines.append(markdown_table(top))
    return "\n".join(lines) + "\n"


def fmt_observed(value: Any) -> str:
    """An observed gate value as text (4 significant digits for floats)."""
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    return "—" if value is None else str(value)


def scan_datasets(loaded: LoadedScan) -> list[ScanDataset]:
    """The datasets the scan read, as MLflow run inputs (training, and evaluation if any)."""
    from infgate.registry.scan_run import ScanDataset

    data = loaded.train.data
    frame = loaded.train.frame
    columns = tuple((str(c), _mlflow_type(frame[c].dtype)) for c in frame.columns)
    name = data.name if data.name and data.name != "train" else Path(loaded.train.uri).stem
    out = [
        ScanDataset(
            name=name or "training data",
            source=loaded.train.uri,
            digest=data.content_hash,
            context="training",
            n_rows=len(data),
            columns=columns,
        )
    ]
    if loaded.eval_data is not None:
        tags = loaded.mv.tags if loaded.mv is not None else {}
        recorded = loaded.eval_uri or tags.get("infgate.eval_data")
        source = recorded or "evaluation data (source not recorded)"
        out.append(
            ScanDataset(
                name=Path(source).stem if recorded else "evaluation data",
                source=source,
                digest=loaded.eval_hash or "",
                context="evaluation",
                n_rows=len(loaded.eval_data),
            )
        )
    return out


def _mlflow_type(dtype: Any) -> str:
    """MLflow's column type name for a pandas dtype (``string`` when unsure)."""
    kind = np.dtype(dtype).kind if not isinstance(dtype, pd.api.extensions.ExtensionDtype) else ""
    size = np.dtype(dtype).itemsize if kind else 0
    return {
        "f": "double" if size == 8 else "float",
        "i": "long" if size == 8 else "integer",
        "u": "long",
        "b": "boolean",
        "S": "binary",
    }.get(kind, "string")


def scan_metrics(loaded: LoadedScan, analysis: Analysis, verdict: GateVerdict) -> dict[str, float]:
    """The scan's metrics, under the same names for every version of a model (so MLflow
    compares its scan runs): counts and rates, the gate, the mismatch test when there is
    evaluation data, recall figures when the true labels are known."""
    ranking, mismatch = analysis.ranking, analysis.mismatch
    n_rows = len(loaded.train.data)
    sus = ranking["is_suspect"].astype(bool)
    metrics: dict[str, float] = {
        "n_rows": float(n_rows),
        "n_suspects": float(sus.sum()),
        "suspect_rate": float(sus.sum()) / max(n_rows, 1),
        "gate_passed": float(verdict.passed),
        "gate_failed_checks": float(len(verdict.reasons)),
    }
    for key, name in (
        ("expected_errors", "expected_label_errors"),
        ("noise_calibration_rows", "noise_calibration_rows"),
        ("noise_probability", "noise_probability"),
        ("loo_leverage_violation_rate", "loo_leverage_violation_rate"),
        ("noise_diagonal_margin", "noise_diagonal_margin"),
        ("neighbour_accuracy", "neighbour_accuracy"),
    ):
        if ranking.attrs.get(key) is not None:
            metrics[name] = float(ranking.attrs[key])
    interval = ranking.attrs.get("expected_errors_interval")
    if interval is not None:
        metrics["expected_label_errors_lower"] = float(interval[0])
        metrics["expected_label_errors_upper"] = float(interval[1])
    if mismatch is not None:
        metrics["mismatch_p_value"] = float(mismatch.p_value)
        metrics["mismatch_statistic"] = float(mismatch.statistic)
        metrics["mismatch_flagged_examples"] = float(np.sum(mismatch.example_flagged))
    wrong = _error_ids(loaded)
    if wrong is not None:
        ids = ranking["example_id"].astype(str).tolist()
        _, y = recall_curve(ids, wrong, n_rows)
        for frac in (0.05, 0.10, 0.20):
            k = min(round(frac * n_rows), len(y) - 1)
            metrics[f"recall_at_{int(frac * 100)}pct"] = float(y[k])
        flagged = set(ranking.loc[sus.to_numpy(), "example_id"].astype(str))
        metrics["n_true_label_errors"] = float(len(wrong))
        metrics["recall_at_suspects"] = len(flagged & wrong) / max(len(wrong), 1)
        metrics["precision_at_suspects"] = len(flagged & wrong) / max(len(flagged), 1)
    return metrics


def _error_ids(loaded: LoadedScan) -> set[str] | None:
    """Ids whose given label differs from the known true label (``None``: not known)."""
    if loaded.true_labels is None:
        return None
    data = loaded.train.data
    return set(data.example_ids[np.asarray(loaded.true_labels) != data.labels].astype(str))


def write_report(
    directory: Path | None,
    *,
    loaded: LoadedScan,
    analysis: Analysis,
    verdict: GateVerdict,
    scan_id: int | None,
    top: int = 20,
) -> ScanReport:
    """Write the report folder; compute the metrics.

    Files: ``findings.csv``, ``gate_verdict.json``, ``inputs.json`` (the datasets read),
    the figures, ``report.html`` (self-contained) and ``summary.md``. A figure or the HTML
    page that cannot be drawn is logged and left out; it never sinks a scan.
    """
    import json

    from infgate.registry.scan_run import INPUTS_FILE
    from infgate.scan.report_html import render_html
    from infgate.scan.report_plots import draw_plots

    ranking, mismatch = analysis.ranking, analysis.mismatch
    directory = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="infgate-report-"))
    directory.mkdir(parents=True, exist_ok=True)
    n_rows = len(loaded.train.data)
    metrics = scan_metrics(loaded, analysis, verdict)
    files: list[Path] = [directory / "findings.csv", directory / "gate_verdict.json"]
    ranking.to_csv(files[0], index=False)
    files[1].write_text(json.dumps(verdict.to_dict(), indent=2, default=str))
    datasets = scan_datasets(loaded)
    files.append(directory / INPUTS_FILE)
    files[-1].write_text(json.dumps({"datasets": [d.to_dict() for d in datasets]}, indent=2))
    figures: list[Path] = []
    try:
        figures = draw_plots(
            directory, ranking, error_ids=_error_ids(loaded), n_rows=n_rows, mismatch=mismatch
        )
    except Exception:  # a plot must never sink a scan
        log.exception("could not draw the scan plots")
    files += figures
    head = ranking[ranking["is_suspect"].astype(bool)].head(top)
    curvature = analysis.curvature.to_dict()
    html_path: Path | None = directory / "report.html"
    try:
        page = render_html(
            subject=loaded.subject,
            scan_id=scan_id,
            verdict=verdict,
            metrics=metrics,
            top=head,
            explanations=analysis.explanations,
            curvature=curvature,
            mismatch=mismatch,
            data=loaded.train.data,
            figures=figures,
            datasets=datasets,
        )
        assert html_path is not None
        html_path.write_text(page, encoding="utf-8")
        files.append(html_path)
    except Exception:  # the page must never sink a scan either
        log.exception("could not write the HTML report")
        html_path = None
    head = head[[c for c in TOP_COLUMNS if c in head.columns]]
    md = summary_markdown(
        model=loaded.subject,
        scan_id=scan_id,
        n_rows=n_rows,
        n_suspects=int(metrics["n_suspects"]),
        verdict=verdict,
        mismatch=mismatch,
        top=head,
        curvature=curvature,
        html_report=html_path,
        noise={str(k): v for k, v in ranking.attrs.items()},
    )
    (directory / "summary.md").write_text(md, encoding="utf-8")
    files.append(directory / "summary.md")
    records = json.loads(head.to_json(orient="records"))
    return ScanReport(directory, metrics, files, md, records)
