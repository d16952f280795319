"""``infgate demo`` end to end, as ``make demo`` runs it: a fresh process with no MLflow or
store URIs in its environment, then a second run that reuses what the first made."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _demo(workdir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_REGISTRY", "INFGATE_", "PREFECT_API"))
    }
    exe = Path(sys.executable).with_name("infgate")
    return subprocess.run(
        [str(exe), "demo", "--workdir", str(workdir)],
        cwd=workdir.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_demo_blocks_the_mislabeled_model_and_a_rerun_reuses_it(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    first = _demo(work)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "BLOCKED" in first.stdout and "infgate promote` refuses" in first.stdout
    assert "registered" in first.stdout and "added by this run" in first.stdout
    # the held-out clean rows calibrate the count, which comes with its interval, and a
    # random split passes the mismatch test
    assert "450 held out with clean labels" in first.stdout
    assert "bootstrap interval" in first.stdout and "mismatch test: p = " in first.stdout
    second = _demo(work)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "reusing models:/digits-demo/1" in second.stdout
    assert "(0 added by this run)" in second.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
