"""One self-contained HTML page per scan (``report.html``): no external assets, every figure
and example picture inlined as base64 PNG.

Sections: the gate verdict with every check (observed value, allowed range, message); the
counts and metrics; the score, recall and mismatch figures; the top suspects with their
pictures (image data) or feature values (tabular); their explanations (the training
examples that support or oppose each suspect's given label, with the sign explained); the
curvature used (back-end, damping and its source, what ``auto`` chose and why); the datasets.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from infgate.data.streamed import feature_rows

if TYPE_CHECKING:
    from infgate.data.training import TrainingData
    from infgate.detect import MismatchReport
    from infgate.gate import GateVerdict
    from infgate.registry.scan_run import ScanDataset

__all__ = ["SIGN_NOTE", "render_html"]

log = logging.getLogger(__name__)

SIGN_NOTE = (
    "Influence of a training example on a suspect is −∇L(suspect)ᵀ (H + λI)⁻¹ ∇L(train) "
    "(Koh &amp; Liang 2017, Eq. 2), with the suspect's loss under its <em>given</em> label. "
    "Negative: up-weighting that training example lowers the suspect's loss, so it "
    "<b>supports</b> the given label. Positive: it raises the loss, so it <b>opposes</b> the "
    "given label. A suspect opposed by many confident examples of another class is likely "
    "mislabeled."
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1100px;color:#1d2330;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.2em;margin-top:28px;
border-bottom:1px solid #d7dbe3;padding-bottom:4px}
.verdict{display:inline-block;padding:4px 12px;border-radius:4px;font-weight:700;color:#fff}
.passed{background:#1f8a4c} .blocked{background:#c0392b}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}
th,td{border:1px solid #d7dbe3;padding:4px 8px;text-align:left;vertical-align:middle}
th{background:#f2f4f8} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.fail td{background:#fdecea} tr.ok td.status{color:#1f8a4c} tr.fail td.status{color:#c0392b}
.figs img{max-width:100%;margin:6px 12px 6px 0;border:1px solid #eee}
.ex img{image-rendering:pixelated;border:1px solid #ccc;vertical-align:middle}
.feat{font-family:ui-monospace,monospace;font-size:.85em}
.note{background:#f6f8fb;border-left:3px solid #8aa1c1;padding:6px 10px;font-size:.9em}
.expl{display:flex;gap:28px;flex-wrap:wrap;margin-bottom:16px}
.muted{color:#667085}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        return "—" if not np.isfinite(v) else f"{v:.4g}"
    return str(value)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


class _Examples:
    """Pictures (image data) or feature values (tabular) and label names of examples."""

    def __init__(self, data: TrainingData, shown: Any = ()) -> None:
        self.data = data
        self.row = {str(v): i for i, v in enumerate(data.example_ids)}
        self._features: dict[int, np.ndarray] = {}
        if not hasattr(data, "features"):  # streamed: read the shown rows in one pass
            rows = sorted({self.row[str(e)] for e in shown if str(e) in self.row})
            self._features = dict(zip(rows, feature_rows(data, rows), strict=True))

    def _x(self, i: int) -> np.ndarray:
        if i in self._features:
            return self._features[i]
        return np.asarray(feature_rows(self.data, [i])[0])

    def label(self, value: Any) -> str:
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return "—"
        classes = self.data.classes
        i = int(value)
        return f"{classes[i]}" if classes and 0 <= i < len(classes) else str(i)

    def given(self, example_id: str) -> str:
        i = self.row.get(str(example_id))
        return "—" if i is None else self.label(self.data.labels[i])

    def cell(self, example_id: str) -> str:
        from infgate.scan.report_plots import example_png

        i = self.row.get(str(example_id))
        if i is None:
            return '<span class="muted">not in the training data</span>'
        x = self._x(i)
        if self.data.image_shape:
            try:
                return _img(example_png(x, self.data.image_shape, scale=4), str(example_id))
            except ValueError:
                log.debug("example %s does not fit image_shape", example_id)
        names = list(self.data.feature_names or [f"x{k}" for k in range(x.size)])
        flat = x.reshape(-1)
        shown = ", ".join(f"{_e(n)}={_fmt(v)}" for n, v in zip(names[:6], flat[:6], strict=False))
        more = f" … (+{flat.size - 6})" if flat.size > 6 else ""
        return f'<span class="feat">{shown}{more}</span>'


def _checks(verdict: GateVerdict) -> str:
    rows = []
    for c in verdict.checks:
        cls = "ok" if c.success else "fail"
        rows.append(
            f'<tr class="{cls}"><td class="status">{"✔ held" if c.success else "✘ failed"}</td>'
            f"<td>{_e(c.name)}</td><td class='num'>{_e(_fmt(c.observed))}</td>"
            f"<td>{_e(c.allowed or '—')}</td><td>{_e(c.message)}</td></tr>"
        )
    head = "<tr><th>result</th><th>check</th><th>observed</th><th>allowed</th><th>why</th></tr>"
    return f'<table id="checks">{head}{"".join(rows)}</table>'


def _metrics(metrics: dict[str, float]) -> str:
    rows = "".join(
        f"<tr><td>{_e(k)}</td><td class='num'>{_e(_fmt(v))}</td></tr>" for k, v in metrics.items()
    )
    return f'<table id="metrics"><tr><th>metric</th><th>value</th></tr>{rows}</table>'


def _suspects(top: pd.DataFrame, ex: _Examples) -> str:
    if not len(top):
        return "<p>No suspected label errors.</p>"
    rows = []
    for r in top.to_dict(orient="records"):
        eid = str(r["example_id"])
        sugg = ex.label(r.get("suggested_label"))
        conf = r.get("suggestion_confidence")
        rows.append(
            f"<tr><td class='num'>{_e(r.get('rank', ''))}</td><td class='ex'>{ex.cell(eid)}</td>"
            f"<td>{_e(eid)}</td><td>{_e(ex.label(r.get('given_label')))}</td>"
            f"<td>{_e(ex.label(r.get('predicted_label')))}</td>"
            f"<td>{_e(sugg)} <span class='muted'>({_e(_fmt(conf))})</span></td>"
            f"<td class='num'>{_e(_fmt(r.get('score')))}</td>"
            f"<td class='num'>{_e(_fmt(r.get('self_influence')))}</td></tr>"
        )
    head = (
        "<tr><th>rank</th><th>example</th><th>example_id</th><th>given</th><th>predicted</th>"
        "<th>suggested (confidence)</th><th>ranking score<br><span class='muted'>higher = "
        "more likely mislabeled</span></th><th>self-influence</th></tr>"
    )
    return f'<table id="suspects">{head}{"".join(rows)}</table>'


def _explanations(explanations: pd.DataFrame | None, ex: _Examples) -> str:
    if explanations is None or not len(explanations):
        return "<p class='muted'>No explanations computed (detect.explain_top = 0).</p>"
    parts = [f'<p class="note" id="sign-note">{SIGN_NOTE}</p>']
    for eid, group in explanations.groupby("example_id", sort=False):
        parts.append(
            f"<h3>{_e(eid)} <span class='ex'>{ex.cell(str(eid))}</span> "
            f"given label {_e(ex.given(str(eid)))}</h3><div class='expl'>"
        )
        for role in ("supporting", "opposing"):
            sub = group[group["role"] == role].sort_values("position")
            rows = "".join(
                f"<tr><td class='ex'>{ex.cell(str(t))}</td><td>{_e(t)}</td>"
                f"<td>{_e(ex.given(str(t)))}</td><td class='num'>{_e(_fmt(v))}</td></tr>"
                for t, v in zip(sub["train_example_id"], sub["influence"], strict=True)
            )
            sign = "influence &lt; 0" if role == "supporting" else "influence &gt; 0"
            parts.append(
                f"<div><b>{role}</b> <span class='muted'>({sign})</span><table>"
                f"<tr><th>example</th><th>id</th><th>label</th><th>influence</th></tr>{rows}"
                "</table></div>"
            )
        parts.append("</div>")
    return "".join(parts)


def _curvature(curvature: dict[str, Any]) -> str:
    if not curvature:
        return "<p class='muted'>not recorded</p>"
    choice = dict(curvature.get("choice") or {})
    rows = [
        ("back-end", curvature.get("method")),
        ("damping λ", _fmt(curvature.get("damping"))),
        ("damping from", curvature.get("damping_source")),
        ("parameters", f"{int(curvature.get('n_params', 0)):,}"),
        ("fit seconds", _fmt(curvature.get("fit_seconds"))),
    ]
    if choice.get("reason"):
        rows.append(("why this back-end (auto)", choice.pop("reason")))
    rows += [(f"auto: {k}", json.dumps(v, default=str)) for k, v in choice.items()]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table id="curvature">{body}</table>'


def _datasets(datasets: Sequence[ScanDataset]) -> str:
    if not datasets:
        return "<p class='muted'>not recorded</p>"
    rows = "".join(
        f"<tr><td>{_e(d.context)}</td><td>{_e(d.name)}</td><td>{_e(d.source)}</td>"
        f"<td class='num'>{d.n_rows:,}</td><td><code>{_e(d.digest[:16])}</code></td></tr>"
        for d in datasets
    )
    head = "<tr><th>context</th><th>name</th><th>source</th><th>rows</th><th>digest</th></tr>"
    return f'<table id="datasets">{head}{rows}</table>'


def render_html(
    *,
    subject: str,
    scan_id: int | None,
    verdict: GateVerdict,
    metrics: dict[str, float],
    top: pd.DataFrame,
    explanations: pd.DataFrame | None,
    curvature: dict[str, Any],
    mismatch: MismatchReport | None,
    data: TrainingData,
    figures: Sequence[Path] = (),
    datasets: Sequence[ScanDataset] = (),
) -> str:
    """The whole report page as one HTML string (see the module docstring).

    Args:
        subject: what was scanned (``name vN``).
        scan_id: the stored scan's id, ``None`` when nothing was stored.
        verdict: the gate's verdict with every check.
        metrics: the scan's metrics.
        top: the top suspects (ranking rows).
        explanations: ``explain`` output for the top suspects, or ``None``.
        curvature: :meth:`CurvatureSummary.to_dict`.
        mismatch: the mismatch report, or ``None``.
        data: the training data (pictures, rows, class names).
        figures: PNG files to inline.
        datasets: the datasets the scan read.
    """
    shown = list(top["example_id"]) if "example_id" in top else []
    if explanations is not None and len(explanations):
        shown += list(explanations["example_id"]) + list(explanations["train_example_id"])
    ex = _Examples(data, shown)
    state = "passed" if verdict.passed else "blocked"
    sid = scan_id if scan_id is not None else "(not stored)"
    n_rows = int(metrics.get("n_rows", len(data)))
    n_sus = int(metrics.get("n_suspects", 0))
    facts = [f"{n_rows:,} training examples", f"{n_sus:,} suspected label errors"]
    if "expected_label_errors_lower" in metrics:  # the count's bootstrap interval
        facts[-1] += (
            f" (bootstrap interval {int(metrics['expected_label_errors_lower']):,}-"
            f"{int(metrics['expected_label_errors_upper']):,})"
        )
    if mismatch is not None:
        facts.append(
            f"train vs eval mismatch p = {float(mismatch.p_value):.3g} "
            f"({'flagged' if mismatch.flagged else 'not flagged'} at α = {mismatch.alpha:g})"
        )
    figs = "".join(_img(Path(f).read_bytes(), Path(f).stem) for f in figures if Path(f).is_file())
    body = [
        f"<h1>infgate scan {_e(sid)}: {_e(subject)}</h1>",
        f'<p><span id="verdict" class="verdict {state}">gate {state.upper()}</span> '
        f"&nbsp;{_e(' · '.join(facts))}</p>",
        "<h2>Gate checks</h2>",
        _checks(verdict),
        "<h2>Figures</h2>",
        f'<div class="figs">{figs or "<p class=muted>none drawn</p>"}</div>',
        "<h2>Top suspects</h2>",
        "<p class='muted'>The ranking score orders examples (higher = more likely mislabeled); "
        "self-influence g'(H+λI)⁻¹g is one input to it, shown apart.</p>",
        _suspects(top, ex),
        "<h2>Why they were flagged</h2>",
        _explanations(explanations, ex),
        "<h2>Curvature</h2>",
        _curvature(curvature),
        "<h2>Metrics</h2>",
        _metrics(metrics),
        "<h2>Datasets</h2>",
        _datasets(datasets),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>infgate scan {_e(sid)}: {_e(subject)} — gate {state}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )
