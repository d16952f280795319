"""Peak memory of a whole scan whose training features stream from Parquet vs the same scan
with the file read whole (and of the bare read, for reference).

Writes ``--rows`` x ``--width`` float32 features (plus ``example_id``, ``label`` and a string
``source`` column, row groups of 50,000) under a temporary folder and a small trained MLP
(``width -> 8 -> 10``, the exact back-end under ``auto``: its fixed memory is small next to
the features), then, each in a fresh process:

* ``read memory`` / ``read stream``: ``TrainingData.from_table`` vs
  ``StreamedTrainingData.from_parquet`` + one pass of ``iter_batches``;
* ``scan memory`` / ``scan stream``: the whole ``scan_dataset`` (curvature fit, ranking,
  explanations of the top suspects, gate, report) on either.

Each prints the content hash, the top-ranked ids (equal for both scans) and the peak RSS
above the imports (Linux: /proc high-water mark, reset after the imports).

Run: ``.venv/bin/python benchmarks/bench_stream.py [--rows 100000] [--width 256]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_MEASURE = """
import hashlib, sys, time
import pyarrow.parquet as pq
import torch
torch.set_num_threads(1)
from infgate.data import StreamedTrainingData, TrainingData, resolve_columns
from infgate.data.readers import read_table
what, mode, path, model_path, out_dir = sys.argv[1:6]
def status(key):  # kB, from /proc (Linux)
    line = next(x for x in open("/proc/self/status") if x.startswith(key))
    return int(line.split()[1])
model = torch.load(model_path, weights_only=False).eval() if what == "scan" else None
from infgate.config import ScanConfig
from infgate.scan import scan_dataset
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark after the imports
base = status("VmRSS:")
t = time.perf_counter()
plan = resolve_columns(pq.read_schema(path))
if mode == "memory":
    data = TrainingData.from_table(read_table(path), plan)
else:
    data = StreamedTrainingData.from_parquet(path, plan, batch_rows=16384)
top = ""
if what == "read":
    if mode == "stream":
        sum(len(x) for _, x, _ in data.iter_batches(4096))
else:
    cfg = ScanConfig().with_overrides(**{"report.directory": out_dir + "/" + mode,
                                         "report.log_to_mlflow": False})
    res = scan_dataset(model, data, config=cfg)
    ids = res.analysis.ranking["example_id"].astype(str).tolist()
    top = " top-ranked " + hashlib.sha256(" ".join(ids).encode()).hexdigest()[:12]
    n_sus = int(res.analysis.ranking["is_suspect"].sum())
    top += f" ({res.analysis.curvature.method}, {n_sus} suspects)"
peak = (status("VmHWM:") - base) / 1024
print(f"{what} {mode:6s} hash {data.content_hash[:12]}{top}  {time.perf_counter() - t:6.1f} s  "
      f"peak RSS +{peak:,.0f} MiB", flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--no-scan", action="store_true", help="only the bare reads")
    args = ap.parse_args()
    import numpy as np
    import pandas as pd
    import torch
    from infgate.examples.models import make_classifier, train_classifier

    print(f"load average {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.parquet"
        rng = np.random.default_rng(0)
        centres = rng.normal(size=(10, args.width)).astype(np.float32)
        labels = rng.integers(0, 10, args.rows)
        feats = centres[labels] + rng.normal(size=(args.rows, args.width)).astype(np.float32)
        flip = rng.random(args.rows) < 0.05
        labels = np.where(flip, (labels + rng.integers(1, 10, args.rows)) % 10, labels)
        df = pd.DataFrame(feats, columns=[f"f{i}" for i in range(args.width)])
        df.insert(0, "example_id", [f"id{i}" for i in range(args.rows)])
        df["label"] = labels
        df["source"] = "vendor"
        df.to_parquet(path, index=False, row_group_size=50_000)
        k = min(args.rows, 20_000)
        model = make_classifier(
            args.width, 10, hidden=(8,), generator=torch.Generator().manual_seed(0)
        )
        train_classifier(model, torch.as_tensor(feats[:k]), torch.as_tensor(labels[:k]))
        model_path = Path(tmp) / "model.pt"
        torch.save(model.eval(), model_path)
        del df, feats
        print(f"{args.rows:,} x {args.width} float32 ({path.stat().st_size / 2**20:,.0f} MiB file)")
        runs = [("read", "memory"), ("read", "stream")]
        if not args.no_scan:
            runs += [("scan", "memory"), ("scan", "stream")]
        for what, mode in runs:
            subprocess.run(
                [sys.executable, "-c", _MEASURE, what, mode, str(path), str(model_path), tmp],
                check=True,
            )


if __name__ == "__main__":
    main()
