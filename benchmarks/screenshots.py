"""Screenshots of what a user sees after one demo scan, taken in headless Chromium.

Starts a real ``mlflow server`` and ``prefect server`` on loopback ports (state under a
temporary folder), registers the demo model (digits with planted flips, evaluation data
shifted on purpose), runs the ``scan-model-version`` flow against both, serves the review
page, and writes small PNGs (256-colour, each under ~300 KB) of:

* ``mlflow_run.png``: the scan run (datasets and model inputs, metrics, tags),
* ``mlflow_version.png``: the model version (description linking the run, the gate tags),
* ``prefect_run.png``: the flow run's artifacts (summary, suspects table, MLflow link),
* ``report.png``: the top of ``report.html``,
* ``review.png``: the review page of the first suspect.

Usage::

    .venv/bin/python benchmarks/screenshots.py --out benchmarks/results/screenshots

Needs Debian ``chromium`` (``apt-get install -y chromium``) and the Playwright package; never
``playwright install``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

log = logging.getLogger("screenshots")
MAX_BYTES = 300_000


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, what: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")


@contextlib.contextmanager
def _servers(root: Path) -> Iterator[tuple[str, str]]:
    """``(mlflow_uri, prefect_api_url)`` of a fresh mlflow server and prefect server."""
    bin_dir = Path(sys.executable).parent
    m_port, p_port = _port(), _port()
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect"), "DO_NOT_TRACK": "1"}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    logs = [(root / "mlflow.log").open("w"), (root / "prefect.log").open("w")]
    mlflow_cmd = [
        str(bin_dir / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root}/mlflow.db",
        "--default-artifact-root",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(m_port),
        "--workers",
        "1",
    ]
    prefect_cmd = [
        str(bin_dir / "prefect"),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(p_port),
    ]
    # the UI asks the API at this URL (its default is port 4200)
    prefect_env = {**env, "PREFECT_UI_API_URL": f"http://127.0.0.1:{p_port}/api"}
    procs = [
        subprocess.Popen(mlflow_cmd, env=env, stdout=logs[0], stderr=subprocess.STDOUT),
        subprocess.Popen(prefect_cmd, env=prefect_env, stdout=logs[1], stderr=subprocess.STDOUT),
    ]
    try:
        mlflow_uri, prefect_url = f"http://127.0.0.1:{m_port}", f"http://127.0.0.1:{p_port}"
        _wait(f"{mlflow_uri}/health", "mlflow server", procs[0])
        _wait(f"{prefect_url}/api/health", "prefect server", procs[1])
        yield mlflow_uri, f"{prefect_url}/api"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for f in logs:
            f.close()


def _demo_scan(root: Path, mlflow_uri: str) -> dict[str, Any]:
    """Register the demo version (with a shifted evaluation set) and scan it with the flow."""
    from infgate.config import ScanConfig
    from infgate.data.training import TrainingData, flip_labels
    from infgate.examples.demo_registry import register_model_with_data
    from infgate.flows.scan import scan_model_version
    from mlflow import MlflowClient
    from sklearn.datasets import load_digits

    d = load_digits()
    n = 500
    x, y = (d.data[:n] / 16.0).astype(np.float32), d.target[:n].astype(np.int64)
    noisy, _ = flip_labels(y, 0.1, 10, np.random.default_rng(0))
    data = TrainingData(
        features=x, labels=noisy, classes=tuple(str(c) for c in range(10)), image_shape=(8, 8)
    )
    reg = register_model_with_data(
        data, name="digits-demo", workdir=root, tracking_uri=mlflow_uri, true_labels=y
    )
    client = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    client.update_model_version(
        reg.name, reg.version, description="Softmax regression on 500 scanned digits."
    )
    frame = data.to_frame().iloc[:200].copy()
    cols = [c for c in frame.columns if c not in ("example_id", "label")]
    frame[cols[:16]] = frame[cols[:16]].to_numpy() + 0.6  # a scanner with a bright top edge
    frame["example_id"] = [f"e{i}" for i in range(len(frame))]
    frame.to_parquet(root / "eval.parquet")
    client.set_model_version_tag(
        reg.name, reg.version, "infgate.eval_data", str(root / "eval.parquet")
    )
    config = ScanConfig().with_overrides(
        **{"report.directory": str(root / "report"), "detect.explain_top": 5}
    )
    state = scan_model_version(
        f"models:/{reg.name}/{reg.version}",
        config=config,
        db_url=f"sqlite:///{root}/infgate.db",
        tracking_uri=mlflow_uri,
        return_state=True,
    )
    summary = dict(state.result(raise_on_failure=False))
    summary["flow_run_id"] = str(state.state_details.flow_run_id)
    summary["experiment_id"] = client.get_run(summary["scan_run_id"]).info.experiment_id
    return summary


@contextlib.contextmanager
def _review_page(db_url: str) -> Iterator[tuple[str, str]]:
    """``(url, login token)`` of the review page over the scan's store, in a thread."""
    import secrets

    import uvicorn
    from infgate.plugins.review_ui import create_app
    from infgate.review.annotators import add_annotator
    from infgate.settings import Settings
    from infgate.store import Store

    store = Store.from_url(db_url)
    token = add_annotator(store, "alice")
    assert token is not None
    settings = Settings.from_env().with_overrides(ui_secret=secrets.token_urlsafe(48))
    port = _port()
    app = create_app(store, settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the review page did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _shrink(path: Path) -> None:
    """Re-save ``path`` with a 256-colour palette (text screenshots lose nothing visible)."""
    from PIL import Image

    with Image.open(path) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            path, optimize=True
        )
    if path.stat().st_size > MAX_BYTES:
        log.warning("%s is %d bytes (over %d)", path.name, path.stat().st_size, MAX_BYTES)


def _shoot(
    page: Any, url: str, path: Path, *, wait_for: str | None = None, pause: float = 0
) -> None:
    page.goto(url)
    if wait_for:
        page.wait_for_selector(wait_for, timeout=60_000)
    if pause:
        page.wait_for_timeout(pause * 1000)
    if "MLflow Assistant" in page.content():  # MLflow 3.17 opens a side panel over the page
        with contextlib.suppress(Exception):
            page.locator("button:right-of(:text('MLflow Assistant'))").last.click(timeout=2000)
            page.wait_for_timeout(500)
    page.screenshot(path=str(path))
    _shrink(path)
    log.info("wrote %s (%d KB)", path, path.stat().st_size // 1024)


def take(out: Path) -> list[Path]:
    """Run the demo and write the screenshots into ``out``; returns their paths."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian chromium is not installed: apt-get install -y chromium")
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="infgate-screens-"))
    with _servers(root) as (mlflow_uri, prefect_api):
        os.environ["PREFECT_API_URL"] = prefect_api
        summary = _demo_scan(root, mlflow_uri)
        ui = prefect_api.removesuffix("/api")
        run_page = (
            f"{mlflow_uri}/#/experiments/{summary['experiment_id']}/runs/{summary['scan_run_id']}"
        )
        version_page = f"{mlflow_uri}/#/models/{summary['model']}/versions/{summary['version']}"
        with (
            _review_page(f"sqlite:///{root}/infgate.db") as (review, token),
            sync_playwright() as pw,
        ):
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                shots = [
                    (run_page, "mlflow_run.png", "text=Datasets", 3),
                    (version_page, "mlflow_version.png", "text=infgate", 3),
                    (
                        f"{ui}/runs/flow-run/{summary['flow_run_id']}?tab=Artifacts",
                        "prefect_run.png",
                        None,
                        8,
                    ),
                    (
                        Path(summary["report_dir"], "report.html").as_uri(),
                        "report.png",
                        "#verdict",
                        0,
                    ),
                ]
                for url, name, selector, pause in shots:
                    try:
                        _shoot(page, url, out / name, wait_for=selector, pause=pause)
                    except Exception:  # one page that will not render must not lose the rest
                        log.exception("could not take %s", name)
                page.goto(review + "/")
                page.fill("#token", token)
                page.click("form.login button[type=submit]")
                _shoot(page, review + "/", out / "review.png", wait_for="#example")
            finally:
                browser.close()
    return sorted(out.glob("*.png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/screenshots"))
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the servers this script started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for path in take(args.out):
        print(f"{path} {path.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
