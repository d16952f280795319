"""Peak memory of reading a Parquet training set whole vs streaming it in batches.

Writes ``--rows`` x ``--width`` float32 features (plus ``example_id``, ``label`` and a string
``source`` column, row groups of 50,000) under a temporary folder, then in a fresh process
each: the in-memory read (``TrainingData.from_table``) and the streamed one
(``StreamedTrainingData.from_parquet`` + one pass of ``iter_batches``). Both print the
content hash (equal) and the peak RSS above the imports (Linux: /proc high-water mark).

Run: ``.venv/bin/python benchmarks/bench_stream.py [--rows 500000] [--width 128]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

_MEASURE = """
import sys, time
import pyarrow.parquet as pq
from infgate.data import StreamedTrainingData, TrainingData, resolve_columns
from infgate.data.readers import read_table
mode, path = sys.argv[1], sys.argv[2]
def status(key):  # kB, from /proc (Linux)
    line = next(x for x in open("/proc/self/status") if x.startswith(key))
    return int(line.split()[1])
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark after the imports
base = status("VmRSS:")
t = time.perf_counter()
plan = resolve_columns(pq.read_schema(path))
if mode == "memory":
    h = TrainingData.from_table(read_table(path), plan).content_hash
else:
    d = StreamedTrainingData.from_parquet(path, plan, batch_rows=16384)
    h = d.content_hash
    sum(len(x) for _, x, _ in d.iter_batches(4096))
peak = (status("VmHWM:") - base) / 1024
print(f"{mode:7s} hash {h[:12]}  {time.perf_counter() - t:5.1f} s  peak RSS +{peak:,.0f} MiB")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--width", type=int, default=128)
    args = ap.parse_args()
    import numpy as np
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.parquet"
        rng = np.random.default_rng(0)
        feats = rng.random((args.rows, args.width), dtype=np.float32)
        df = pd.DataFrame(feats, columns=[f"f{i}" for i in range(args.width)])
        df.insert(0, "example_id", [f"id{i}" for i in range(args.rows)])
        df["label"] = rng.integers(0, 10, args.rows)
        df["source"] = "vendor"
        df.to_parquet(path, index=False, row_group_size=50_000)
        del df, feats
        print(f"{args.rows:,} x {args.width} float32 ({path.stat().st_size / 2**20:,.0f} MiB file)")
        for mode in ("memory", "stream"):
            subprocess.run([sys.executable, "-c", _MEASURE, mode, str(path)], check=True)


if __name__ == "__main__":
    main()
