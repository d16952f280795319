"""Orchestration overhead and webhook-to-flow latency.

1. Whole ``scan_model_version`` flow time vs the influence stage alone, on 10,000
   examples (digits tiled with pixel jitter, 10% uniform flips, softmax regression),
   side by side in the same warm process (Prefect ephemeral API, local sqlite MLflow and
   store). Target: flow / influence <= 1.5.
2. Webhook latency with real servers on 127.0.0.1: ``mlflow server`` with webhooks on, the
   receiver (embedded starter), Prefect's temporary server. For each new model version:
   registration call -> delivery received -> worker picks it up -> flow run Running.

Run: ``.venv/bin/python benchmarks/bench_flow.py [--n 10000] [--repeats 3] [--deliveries 4]``
Writes ``benchmarks/results/flow.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def big_digits(n: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """``n`` digits rows: the 1,797 images tiled with N(0, 0.05) pixel jitter, 10% flips."""
    from infgate.data.training import TrainingData, flip_labels
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    idx = np.resize(np.arange(len(d.target)), n)
    x = np.clip(d.data[idx] / 16.0 + rng.normal(0, 0.05, (n, 64)), 0, 1).astype(np.float32)
    y = d.target[idx].astype(np.int64)
    noisy, _ = flip_labels(y, 0.1, 10, rng)
    data = TrainingData(x, noisy, classes=tuple(map(str, range(10))), image_shape=(8, 8))
    return data, y


def overhead(n: int, repeats: int, work: Path, hidden: tuple[int, ...] = ()) -> dict:
    from infgate.config import ScanConfig
    from infgate.examples.demo_registry import register_model_with_data
    from infgate.flows.scan import scan_model_version
    from infgate.scan.stages import analyse, load_stage
    from infgate.settings import Settings

    data, clean = big_digits(n)
    tag = "mlp" + "-".join(map(str, hidden)) if hidden else "softmax"
    uri = f"sqlite:///{work}/mlflow-{tag}.db"
    reg = register_model_with_data(
        data, name="bench", workdir=work / tag, tracking_uri=uri, true_labels=clean, hidden=hidden
    )
    ref = f"models:/bench/{reg.version}"
    db = f"sqlite:///{work}/infgate-{tag}.db"
    settings = Settings(tracking_uri=uri)

    def config(store_top: int) -> ScanConfig:
        return ScanConfig().with_overrides(**{"detect.store_top": store_top})

    # warm-up: imports, the ephemeral Prefect API, GX context, MLflow client caches
    scan_model_version(ref, db_url=db, tracking_uri=uri, config=config(0), return_state=True)
    rows = []
    for r in range(repeats):
        loaded = load_stage(ref, config=config(r + 1), settings=settings)
        t0 = time.perf_counter()
        stage_t = analyse(loaded, config(r + 1)).timings  # fit + sweep + ranking + mismatch
        influence_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        # a new store_top -> a new config identity -> no cache hit: the flow recomputes
        state = scan_model_version(
            ref, db_url=db, tracking_uri=uri, config=config(r + 1), return_state=True
        )
        flow_s = time.perf_counter() - t0
        summary = state.result(raise_on_failure=False)
        rows.append(
            {
                "influence_s": influence_s,
                "influence_parts_s": stage_t,
                "flow_s": flow_s,
                "ratio": flow_s / influence_s,
                "verdict": summary["verdict"],
            }
        )
        print(
            f"  repeat {r}: influence {influence_s:.1f}s, flow {flow_s:.1f}s, "
            f"ratio {flow_s / influence_s:.2f}"
        )
    n_params = sum(q.numel() for q in loaded.model.parameters())
    return {
        "n": n,
        "model": tag,
        "n_params": n_params,
        "repeats": rows,
        "median_ratio": statistics.median(r["ratio"] for r in rows),
        "median_overhead_s": statistics.median(r["flow_s"] - r["influence_s"] for r in rows),
    }


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def webhook_latency(deliveries: int, work: Path) -> dict:
    import uvicorn
    from cryptography.fernet import Fernet
    from infgate.examples.demo_registry import register_model_with_data
    from infgate.plugins.cli.demo import digits_with_flips
    from infgate.plugins.review_hook import EmbeddedStarter, HookSettings, create_app
    from infgate.plugins.review_hook.register import register_webhook
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client

    port = _port()
    env = {
        **os.environ,
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    log = (work / "mlflow-server.log").open("w")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            f"sqlite:///{work}/server.db",
            "--default-artifact-root",
            str(work / "art"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(240):
            try:
                if httpx.get(f"{uri}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        secret = secrets.token_urlsafe(32)
        starter = EmbeddedStarter(db_url=f"sqlite:///{work}/hook.db", tracking_uri=uri)
        hport = _port()
        app = create_app(HookSettings(secret=secret), starter)
        srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=hport, log_level="warning"))
        threading.Thread(target=srv.run, daemon=True).start()
        time.sleep(2)
        register_webhook(f"http://127.0.0.1:{hport}/webhook", tracking_uri=uri, secret=secret)
        data, _, _ = digits_with_flips(0.1, 0)

        def started_for(version: str):  # type: ignore[no-untyped-def]
            while True:
                for rec in list(starter.started):
                    if rec.request.version == version:
                        return rec
                time.sleep(0.01)

        reg = register_model_with_data(data, name="hooked", workdir=work, tracking_uri=uri)
        started_for(str(reg.version))  # warm-up delivery and scan
        starter.wait_idle(600)
        client = MlflowClient(uri, registry_uri=uri)
        source = client.get_model_version("hooked", reg.version)
        rows = []
        for _ in range(deliveries):
            t0 = time.time()
            mv = client.create_model_version(
                "hooked",
                source.source,
                run_id=reg.run_id,
                model_id=source.source.removeprefix("models:/"),
            )
            rec = started_for(str(mv.version))
            starter.wait_idle(600)
            rows.append(
                {
                    "version": str(mv.version),
                    "register_to_received_s": rec.request.received_at - t0,
                    "received_to_worker_s": rec.started_at - rec.request.received_at,
                    "flow_run_id": rec.outcome.get("flow_run_id"),
                }
            )
        # flow run start times from the Prefect API
        import uuid

        with get_client(sync_client=True) as pc:
            for row, rec in zip(rows, [started_for(r["version"]) for r in rows], strict=True):
                run = pc.read_flow_run(uuid.UUID(str(row.pop("flow_run_id"))))
                assert run.start_time is not None
                start = run.start_time.timestamp()
                row["received_to_flow_running_s"] = start - rec.request.received_at
        srv.should_exit = True
        starter.close()
        return {
            "deliveries": rows,
            "median_received_to_flow_running_s": statistics.median(
                r["received_to_flow_running_s"] for r in rows
            ),
            "median_register_to_received_s": statistics.median(
                r["register_to_received_s"] for r in rows
            ),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--deliveries", type=int, default=4)
    args = ap.parse_args()
    import mlflow
    import prefect
    import torch

    work = Path(tempfile.mkdtemp(prefix="bench-flow-"))
    os.chdir(work)
    print(f"work dir {work}")
    print("1. flow overhead (softmax regression, then an MLP 64-32-10)")
    over = overhead(args.n, args.repeats, work)
    over_mlp = overhead(args.n, args.repeats, work, hidden=(32,))
    print("2. webhook latency")
    hook = webhook_latency(args.deliveries, work)
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "mlflow": mlflow.__version__,
            "prefect": prefect.__version__,
            "load_average": os.getloadavg(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/bench_flow.py " + " ".join(sys.argv[1:]),
        "overhead": over,
        "overhead_mlp": over_mlp,
        "webhook": hook,
    }
    out = ROOT / "benchmarks" / "results" / "flow.json"
    out.write_text(json.dumps(result, indent=2))
    print("\n| measure | value |\n| --- | ---: |")
    for o in (over, over_mlp):
        print(
            f"| flow / influence stage, {o['model']} ({o['n_params']:,} params; median of "
            f"{args.repeats}, n={args.n:,}) | {o['median_ratio']:.2f} "
            f"(+{o['median_overhead_s']:.1f} s) |"
        )
    running = hook["median_received_to_flow_running_s"]
    received = hook["median_register_to_received_s"]
    print(f"| webhook received -> flow run Running (median) | {running:.2f} s |")
    print(f"| registration call -> webhook received (median) | {received:.2f} s |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
