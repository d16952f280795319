"""Relabeling-queue throughput: claims per second on SQLite and PostgreSQL, side by side.

Each run enqueues ``--items`` findings and lets ``--threads`` workers claim and decide
(``keep``) until the queue is empty; every claim is a lease (SQLite: atomic conditional
UPDATE under BEGIN IMMEDIATE; PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED). It also
checks the run: no item claimed twice, one decision per item.

    .venv/bin/python benchmarks/bench_queue.py                # SQLite + PostgreSQL if reachable
    INFGATE_BENCH_PG_URL=postgresql+psycopg2://... .venv/bin/python benchmarks/bench_queue.py

PostgreSQL comes from INFGATE_BENCH_PG_URL, else INFGATE_TEST_PG_URL (a fresh schema is
created and dropped). Results: benchmarks/results/queue.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infgate.review.annotators import ensure_annotator
from infgate.review.queue import claim_next, decide, enqueue_scan
from infgate.store import ScanRecord, Store

RESULTS = Path(__file__).resolve().parent / "results" / "queue.json"


def _record(n: int, seed: int) -> ScanRecord:
    rng = np.random.default_rng(seed)
    findings = pd.DataFrame(
        {
            "example_id": [f"e{i}" for i in range(n)],
            "score": np.sort(rng.random(n))[::-1],
            "rank": np.arange(1, n + 1),
            "given_label": rng.integers(0, 10, n),
            "suggested_label": rng.integers(0, 10, n),
            "kind": "label_error",
        }
    )
    return ScanRecord(
        model_name="bench",
        model_version=str(seed),
        run_id=None,
        dataset_hash=f"{seed:064d}",
        dataset_uri=None,
        n_rows=n,
        classes=[str(c) for c in range(10)],
        config={},
        method="exact",
        damping=1e-3,
        timings={},
        findings=findings,
        mismatch=None,
    )


def run_once(store: Store, n_items: int, n_threads: int, seed: int) -> dict[str, Any]:
    """Claim and decide every item with ``n_threads`` workers; returns timings and checks."""
    scan_id = store.record_scan(_record(n_items, seed))
    enqueue_scan(store, scan_id)
    names = [f"bench{seed}_{i}" for i in range(n_threads)]
    for name in names:
        ensure_annotator(store, name)
    claimed: list[list[int]] = [[] for _ in names]
    claim_time = [0.0] * n_threads
    barrier = threading.Barrier(n_threads + 1)

    def work(i: int) -> None:
        barrier.wait()
        while True:
            t0 = time.perf_counter()
            item = claim_next(store, names[i], lease_seconds=600)
            claim_time[i] += time.perf_counter() - t0
            if item is None or item.scan_id != scan_id:
                return
            claimed[i].append(item.item_id)
            decide(store, item.item_id, names[i], "keep", lease_token=item.lease_token)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    flat = [c for per in claimed for c in per]
    return {
        "items": n_items,
        "threads": n_threads,
        "wall_s": wall,
        "claims_per_s": len(flat) / wall,
        "mean_claim_ms": 1000 * sum(claim_time) / max(len(flat), 1),
        "double_claims": sum(1 for n in Counter(flat).values() if n > 1),
        "claimed": len(flat),
    }


def _backends(tmp: Path) -> list[tuple[str, str, str | None]]:
    out: list[tuple[str, str, str | None]] = [("sqlite", f"sqlite:///{tmp}/bench.db", None)]
    base = os.environ.get("INFGATE_BENCH_PG_URL") or os.environ.get("INFGATE_TEST_PG_URL")
    if base:
        schema = "bench_" + uuid.uuid4().hex[:10]
        with create_engine(base).begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in base else "?"
        out.append(("postgresql", f"{base}{sep}options=-csearch_path%3D{schema}", schema))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    console = Console()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        backends = _backends(Path(tmp))
        if len(backends) == 1:
            console.print("[yellow]no PostgreSQL URL (INFGATE_BENCH_PG_URL): SQLite only[/]")
        seed = 0
        for name, url, schema in backends:
            store = Store.from_url(url)
            store.upgrade()
            for n_threads in args.threads:
                for rep in range(args.repeats):
                    seed += 1
                    res = run_once(store, args.items, n_threads, seed)
                    rows.append({"backend": name, "repeat": rep, **res})
                    console.print(
                        f"{name:10s} threads={n_threads:2d} rep={rep}: "
                        f"{res['claims_per_s']:.0f} claims/s, double claims {res['double_claims']}"
                    )
            store.dispose()
            if schema:
                base = url.split("?")[0]
                with create_engine(base).begin() as conn:
                    conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    frame = pd.DataFrame(rows)
    summary = frame.groupby(["backend", "threads"], as_index=False).agg(
        claims_per_s=("claims_per_s", "median"),
        mean_claim_ms=("mean_claim_ms", "median"),
        double_claims=("double_claims", "sum"),
    )
    table = Table(
        title=f"Queue throughput: claim + decide, {args.items} items (median of {args.repeats})"
    )
    for col in ["backend", "threads", "claims/s", "mean claim ms", "double claims", "PG / SQLite"]:
        table.add_column(col, justify="left" if col == "backend" else "right")
    sqlite_rate = {r.threads: r.claims_per_s for r in summary.itertuples() if r.backend == "sqlite"}
    for r in summary.itertuples():
        ratio = "" if r.backend == "sqlite" else f"{r.claims_per_s / sqlite_rate[r.threads]:.2f}"
        table.add_row(
            str(r.backend),
            str(r.threads),
            f"{r.claims_per_s:.0f}",
            f"{r.mean_claim_ms:.1f}",
            str(r.double_claims),
            ratio,
        )
    console.print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "queue throughput (claim + decide keep)",
                "command": "python benchmarks/bench_queue.py " + " ".join(sys.argv[1:]),
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": {
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_average_1m_at_end": os.getloadavg()[0],
                },
                "versions": {
                    "sqlalchemy": sqlalchemy.__version__,
                    "sqlite": __import__("sqlite3").sqlite_version,
                },
                "summary": summary.to_dict("records"),
                "runs": rows,
            },
            indent=1,
        )
    )
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
