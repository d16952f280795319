"""``summary.md`` is valid Markdown: the gate checks and the top suspects render as tables."""

from __future__ import annotations

import pandas as pd

from tests.report.conftest import FlowScan


def test_markdown_table_escapes_pipes_and_formats_floats() -> None:
    from infgate.scan.report import markdown_table

    frame = pd.DataFrame({"a": [1, 2], "b": ["x|y", "z"], "c": [0.123456, 1e6]})
    assert markdown_table(frame) == (
        "| a | b | c |\n| --- | --- | --- |\n| 1 | x\\|y | 0.1235 |\n| 2 | z | 1e+06 |"
    )


def test_summary_renders_checks_and_suspects_as_tables(flow_scan: FlowScan) -> None:
    from markdown_it import MarkdownIt

    text = (flow_scan.report_dir / "summary.md").read_text()
    html = MarkdownIt("commonmark").enable("table").render(text)
    assert html.count("<table>") == 2
    checks, suspects = html.split("<table>")[1:]
    n_checks = len(pd.read_json(flow_scan.report_dir / "gate_verdict.json", typ="series")["checks"])
    assert checks.count("<tr>") == n_checks + 1  # header + one row per check
    assert "<th>allowed</th>" in checks and "<th>observed</th>" in checks
    n_suspects = int(flow_scan.summary["n_suspects"])
    assert suspects.split("</table>")[0].count("<tr>") == min(n_suspects, 20) + 1
    assert "report.html" in text
    # the count's source: the noise model, its evidence for any noise, its calibration
    line = next(x for x in text.splitlines() if x.startswith("- label-noise model:"))
    assert "expected label errors" in line and "P(any label wrong)" in line
    assert "labelled evaluation rows" in line or "training labels alone" in line
    # calibrated on the fixture's evaluation rows: the count comes with its interval, here
    # and in report.html's headline
    assert "% bootstrap interval " in line
    assert (
        "suspected label errors (bootstrap interval "
        in (flow_scan.report_dir / "report.html").read_text()
    )


def test_summary_names_the_noise_model_behind_the_count() -> None:
    from infgate.gate import GateVerdict
    from infgate.scan.report import summary_markdown

    verdict = GateVerdict("passed")
    common = dict(model="m v1", scan_id=1, n_rows=300, n_suspects=0, verdict=verdict,
                  mismatch=None, top=pd.DataFrame())  # fmt: skip
    evald = {"expected_errors": 0.04, "noise_probability": 0.016, "noise_calibration": "eval",
             "noise_calibration_rows": 100}  # fmt: skip
    text = summary_markdown(**common, noise=evald)  # type: ignore[arg-type]
    assert (
        "- label-noise model: 0.0 expected label errors, P(any label wrong) 0.016 "
        "(calibrated on 100 labelled evaluation rows)"
    ) in text
    spread = {**evald, "expected_errors": 41.6, "noise_probability": 1.0,
              "expected_errors_interval": [30, 1204],
              "expected_errors_interval_level": 0.8}  # fmt: skip
    text = summary_markdown(**common, noise=spread)  # type: ignore[arg-type]
    assert "41.6 expected label errors (80% bootstrap interval 30-1,204), P(any" in text
    train = {"expected_errors": 12.3, "noise_probability": 1.0, "noise_calibration": "train"}
    text = summary_markdown(**common, noise=train)  # type: ignore[arg-type]
    assert "12.3 expected label errors, P(any label wrong) 1 (fitted on the training labels" in text
    assert "label-noise model" not in summary_markdown(**common)  # type: ignore[arg-type]
    assert "not diagonally dominant" not in text
    weak = {**train, "expected_errors": 281.0, "noise_diagonal_margin": -0.63}
    text = summary_markdown(**common, noise=weak)  # type: ignore[arg-type]
    assert "not diagonally dominant (margin -0.63)" in text
    assert "not an estimate of the label errors" in text


def test_summary_says_which_clean_posterior_the_count_used() -> None:
    """``both`` (leave-one-out outputs stacked with the evaluation neighbours) and
    ``neighbours`` are named; a leverage warning is shown unless the votes were used alone."""
    from infgate.gate import GateVerdict
    from infgate.scan.report import summary_markdown

    common = dict(model="m v1", scan_id=1, n_rows=300, n_suspects=0,
                  verdict=GateVerdict("passed"), mismatch=None, top=pd.DataFrame())  # fmt: skip
    base = {"expected_errors": 30.0, "noise_probability": 1.0, "noise_calibration": "eval",
            "noise_calibration_rows": 100, "neighbour_accuracy": 0.9,
            "loo_leverage_violation_rate": 0.2}  # fmt: skip
    both = summary_markdown(**common, noise={**base, "noise_posterior": "both"})  # type: ignore[arg-type]
    assert "leave-one-out outputs stacked with each row's nearest evaluation rows" in both
    assert "whose vote is right on 90%" in both and "leverage >= 1 on 20%" in both
    votes = summary_markdown(**common, noise={**base, "noise_posterior": "neighbours"})  # type: ignore[arg-type]
    assert "clean posterior from each row's nearest evaluation rows, whose vote" in votes
    assert "leverage >= 1" not in votes
