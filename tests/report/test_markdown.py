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
