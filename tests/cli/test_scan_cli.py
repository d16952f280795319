"""``infgate scan`` and ``infgate promote`` against a real ``mlflow server``: exit 2 when
blocked, one JSON document, the verdict, top suspects, report and MLflow run printed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli.conftest import Run
from tests.services import NoisyVersion


@pytest.fixture
def where(noisy_version: NoisyVersion, tmp_path: Path) -> dict[str, str]:
    return {
        "ref": f"models:/noisy/{noisy_version.version}",
        "db": f"sqlite:///{tmp_path / 'infgate.db'}",
        "uri": noisy_version.server.uri,
        "report": str(tmp_path / "report"),
    }


def _scan(run: Run, w: dict[str, str], *extra: str):  # type: ignore[no-untyped-def]
    return run(
        "scan",
        w["ref"],
        "--no-flow",
        "--db",
        w["db"],
        "--tracking-uri",
        w["uri"],
        "--report-dir",
        w["report"],
        "--damping",
        "0.001",
        *extra,
    )


def test_scan_blocks_with_exit_2_and_one_json_document(run: Run, where: dict[str, str]) -> None:
    res = _scan(run, where, "--json", "--top", "5")
    assert res.code == 2, res
    doc = json.loads(res.out)
    assert doc["verdict"] == "blocked" and doc["model"] == "noisy"
    assert {r["check"] for r in doc["reasons"]} >= {"suspect_rate"}
    assert all(
        set(r) == {"check", "column", "observed", "threshold", "message"} for r in doc["reasons"]
    )
    top = doc["top_suspects"]
    assert len(top) == 5 and [t["rank"] for t in top] == sorted(t["rank"] for t in top)
    assert (
        doc["mlflow_run_url"].startswith(where["uri"])
        and doc["mlflow_run_id"] in doc["mlflow_run_url"]
    )
    assert Path(doc["report"]).is_file() and doc["report_dir"] == where["report"]
    assert "scan: report done" in res.err or "report" in res.err  # progress went to stderr

    again = _scan(run, where)  # the stored scan is reused; the human view
    assert again.code == 2, again
    assert f"scan {doc['scan_id']} of {where['ref']}: gate blocked" in again.out
    assert "suspect_rate\tsuspect_unreviewed" in again.out
    assert f"report: {doc['report']}" in again.out
    # a reused scan is still logged as a new MLflow scan run: its id and link are printed
    link = re.search(r"MLflow run: ([0-9a-f]{32}) \((\S+)\)", again.out)
    assert link is not None and link.group(2).startswith(where["uri"])
    assert link.group(2).endswith(f"/runs/{link.group(1)}")
    for stage in ("load", "gate", "report"):
        assert f"scan: {stage} done" in again.err

    refused = run(
        "promote", where["ref"], "--json", "--db", where["db"], "--tracking-uri", where["uri"]
    )
    assert refused.code == 2, refused
    verdict = json.loads(refused.out)
    assert verdict["promoted"] is False and verdict["alias"] == "champion"
    assert "suspect_rate" in {r["check"] for r in verdict["reasons"]}


def test_scan_through_the_flow(run: Run, where: dict[str, str], prefect_harness: None) -> None:
    res = run(
        "scan",
        where["ref"],
        "--db",
        where["db"],
        "--tracking-uri",
        where["uri"],
        "--report-dir",
        where["report"],
        "--json",
    )
    assert res.code == 2, res
    doc = json.loads(res.out)
    assert doc["verdict"] == "blocked" and doc["top_suspects"]
    assert "scan: gate done" in res.err


def test_scan_of_a_file_without_an_id_column_numbers_the_rows(
    run: Run, where: dict[str, str], noisy_version: NoisyVersion, tmp_path: Path
) -> None:
    """A Parquet file with no ``example_id`` column: rows are ids ``"0".."n-1"`` in file
    order, through the findings, the gate and the top suspects."""
    import pandas as pd

    frame = pd.read_parquet(noisy_version.data_path).drop(columns=["example_id"])
    path = tmp_path / "no_ids.parquet"
    frame.to_parquet(path)
    res = _scan(run, where, "--data", str(path), "--json", "--top", "5")
    assert res.code == 2, res
    doc = json.loads(res.out)
    assert "suspect_rate" in {r["check"] for r in doc["reasons"]}
    top = doc["top_suspects"]
    assert len(top) == 5
    for t in top:  # the id is the row position: its label is that row's
        assert int(frame["label"].iloc[int(t["example_id"])]) == int(t["given_label"]), t


@pytest.mark.parametrize("stream", ["never", "always"])
def test_scan_of_a_folder_of_parquet_parts_equals_the_file(
    stream: str, run: Run, where: dict[str, str], noisy_version: NoisyVersion, tmp_path: Path
) -> None:
    """The version's training file split into Spark-style part files in one folder: the
    scan reads them in order (whole or streamed) and finds the same top suspects as the
    single file."""
    import pandas as pd

    frame = pd.read_parquet(noisy_version.data_path)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, start in enumerate(range(0, len(frame), 128)):
        frame.iloc[start : start + 128].to_parquet(folder / f"part-{i:05d}.parquet")
    (folder / "_SUCCESS").write_text("")
    one = _scan(run, where, "--data", noisy_version.data_path, "--json", "--top", "8")
    where = {**where, "db": f"sqlite:///{tmp_path / 'parts.db'}"}
    parts = _scan(run, where, "--data", str(folder), "--json", "--top", "8", "--stream", stream)
    assert one.code == parts.code == 2, (one, parts)
    a, b = json.loads(one.out), json.loads(parts.out)
    assert [t["example_id"] for t in a["top_suspects"]] == [
        t["example_id"] for t in b["top_suspects"]
    ]
