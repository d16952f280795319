"""What a scan flow run shows in Prefect: its run name and its flow-run-level artifacts."""

from __future__ import annotations

import re

from infgate.scan import LoadedScan, ReportOutcome
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run as _flow_run

__all__ = ["publish_artifacts", "scan_run_name"]


def scan_run_name() -> str:
    """``scan-<model>-v<version>`` (or ``scan-<model>-<alias>``) for the flow run."""
    params = _flow_run.parameters
    model = str(params.get("model", "model"))
    m = re.match(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))?$", model)
    name, alias, version = (m["name"], m["alias"], m["version"]) if m else (model, None, None)
    version = version or params.get("version")
    tail = f"v{version}" if version else (alias or "latest")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"scan-{name}-{tail}")


def publish_artifacts(loaded: LoadedScan, report: ReportOutcome) -> None:
    """Prefect artifacts at the flow-run level: the markdown summary, the suspects table, where
    the HTML report is, and a link to the MLflow scan run."""
    from prefect.artifacts import create_link_artifact

    assert loaded.mv is not None
    key = re.sub(r"[^a-z0-9-]+", "-", f"infgate-{loaded.mv.name}-v{loaded.mv.version}".lower())
    create_markdown_artifact(report.markdown, key=f"{key}-summary", description="infgate scan")
    if report.top_table:
        create_table_artifact(
            list(report.top_table), key=f"{key}-suspects", description="top suspected label errors"
        )
    html = report.directory / "report.html"
    if html.exists():
        where = f"[the MLflow scan run]({report.scan_run_url}) (artifacts, `infgate/report.html`)"
        create_markdown_artifact(
            f"# infgate report\n\nThe self-contained HTML report of this scan: `{html}`"
            + (f", also logged to {where}." if report.scan_run_url else "."),
            key=f"{key}-report",
            description="infgate HTML report",
        )
    if report.scan_run_url and report.scan_run_url.startswith("http"):
        create_link_artifact(
            report.scan_run_url, link_text="MLflow scan run", key=f"{key}-mlflow-run"
        )
