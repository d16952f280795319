"""Peak memory of a whole scan whose training features stream from Parquet vs the same scan
with the file read whole (and of the bare read, for reference).

Writes ``--rows`` x ``--width`` float32 features (plus ``example_id``, ``label`` and a string
``source`` column, row groups of ``--row-group`` rows, 50,000 by default) under a temporary
folder and a small trained MLP (``width -> hidden -> 10``, ``--hidden 8`` by default; the
exact back-end under ``auto``, whose fixed memory and time grow with the square of the
parameter count, about ``width * hidden``: keep it small next to the features, e.g.
``--width 1024 --hidden 2``), then, each in a fresh process:

* ``read memory`` / ``read stream``: ``TrainingData.from_table`` vs
  ``StreamedTrainingData.from_parquet`` + one pass of ``iter_batches``;
* ``scan memory`` / ``scan stream``: the whole ``scan_dataset`` (curvature fit, ranking,
  explanations of the top suspects, gate, report) on either.

Each prints the content hash, the top-ranked ids (equal for both scans) and the peak RSS
above the imports (Linux: /proc high-water mark, reset after the imports); a scan also
prints the peak of each stage (``open`` the data, ``scan`` = building the scan's inputs,
then ``fit``, ``influence``, ``detect``, ``gate``, ``report``; the mark is reset as each
stage starts, so each figure is that stage's own peak above the imports).

Run: ``.venv/bin/python benchmarks/bench_stream.py [--rows 100000] [--width 256] [--hidden 8]``;
the measurements go to ``benchmarks/results/stream_<rows>x<width>.json`` (``--no-write``: print
only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
_LINE = re.compile(
    r"^(?P<what>read|scan) (?P<mode>memory|stream)\s+hash (?P<hash>\w+)"
    r"(?: top-ranked (?P<top>\w+) \((?P<method>\w+), (?P<suspects>\d+) suspects\))?"
    r"\s+(?P<seconds>[\d.]+) s\s+peak RSS \+(?P<peak>[\d,]+) MiB$"
)

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
stage_peaks = []  # (stage, peak RSS above the imports while it ran, MiB)
current = ["open"]
def note(stage):  # scan_dataset's progress callback: called as each stage starts
    stage_peaks.append((current[0], (status("VmHWM:") - base) / 1024))
    open("/proc/self/clear_refs", "w").write("5")
    current[0] = stage
if what == "read":
    if mode == "stream":
        sum(len(x) for _, x, _ in data.iter_batches(4096))
else:
    cfg = ScanConfig().with_overrides(**{"report.directory": out_dir + "/" + mode,
                                         "report.log_to_mlflow": False})
    note("scan")
    res = scan_dataset(model, data, config=cfg, progress=note)
    ids = res.analysis.ranking["example_id"].astype(str).tolist()
    top = " top-ranked " + hashlib.sha256(" ".join(ids).encode()).hexdigest()[:12]
    n_sus = int(res.analysis.ranking["is_suspect"].sum())
    top += f" ({res.analysis.curvature.method}, {n_sus} suspects)"
note("end")
peak = max(p for _, p in stage_peaks)
print(f"{what} {mode:6s} hash {data.content_hash[:12]}{top}  {time.perf_counter() - t:6.1f} s  "
      f"peak RSS +{peak:,.0f} MiB", flush=True)
if what == "scan":
    print("    peak RSS by stage: " + ", ".join(f"{k} +{p:,.0f}" for k, p in stage_peaks))
"""


def parse_output(lines: list[str]) -> list[dict[str, Any]]:
    """The measurements in the printed lines (the children's output), one dict per run."""
    out: list[dict[str, Any]] = []
    for line in lines:
        m = _LINE.match(line.strip())
        if m:
            d: dict[str, Any] = {k: v for k, v in m.groupdict().items() if v is not None}
            d["seconds"] = float(d["seconds"])
            d["peak_rss_mib"] = int(d.pop("peak").replace(",", ""))
            if "suspects" in d:
                d["suspects"] = int(d["suspects"])
            out.append(d)
        elif line.strip().startswith("peak RSS by stage:") and out:
            stages = line.split(":", 1)[1].split(", ")
            out[-1]["stage_peak_rss_mib"] = {
                k: int(v.lstrip("+").replace(",", ""))
                for k, v in (x.strip().split(" ") for x in stages)
            }
    return out


def write_json(meta: dict[str, Any], lines: list[str]) -> Path:
    """``results/stream_<rows>x<width>.json``: the run's settings and its measurements."""
    path = RESULTS / f"stream_{meta['rows']}x{meta['width']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "runs": parse_output(lines), "output": lines}, indent=2))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=8, help="the MLP's hidden width")
    ap.add_argument("--row-group", type=int, default=50_000, help="Parquet row-group rows")
    ap.add_argument("--no-scan", action="store_true", help="only the bare reads")
    ap.add_argument("--no-write", action="store_true", help="print only (no results json)")
    ap.add_argument(
        "--runs",
        default="read:memory,read:stream,scan:memory,scan:stream",
        help="which measurements, in order (comma-separated what:mode)",
    )
    args = ap.parse_args()
    import numpy as np
    import pandas as pd
    import torch
    from infgate.examples.models import make_classifier, train_classifier

    meta: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join(["benchmarks/bench_stream.py", *sys.argv[1:]]),
        "rows": args.rows,
        "width": args.width,
        "hidden": args.hidden,
        "row_group": args.row_group,
        "cores": os.cpu_count(),
        "load_before": " / ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    lines = [f"load average {meta['load_before']}"]
    print(lines[0])
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
        df.to_parquet(path, index=False, row_group_size=args.row_group)
        k = min(args.rows, 20_000)
        model = make_classifier(
            args.width, 10, hidden=(args.hidden,), generator=torch.Generator().manual_seed(0)
        )
        train_classifier(model, torch.as_tensor(feats[:k]), torch.as_tensor(labels[:k]))
        model_path = Path(tmp) / "model.pt"
        torch.save(model.eval(), model_path)
        del df
        lines.append(
            f"{args.rows:,} x {args.width} float32 ({feats.nbytes / 2**20:,.0f} MiB in memory, "
            f"{path.stat().st_size / 2**20:,.0f} MiB file, row groups of {args.row_group:,}); "
            f"model {args.width} -> {args.hidden} -> 10 "
            f"({sum(p.numel() for p in model.parameters()):,} parameters)"
        )
        print(lines[-1], flush=True)
        del feats
        runs = [tuple(r.split(":")) for r in args.runs.split(",")]
        if args.no_scan:
            runs = [r for r in runs if r[0] == "read"]
        for what, mode in runs:
            res = subprocess.run(
                [sys.executable, "-c", _MEASURE, what, mode, str(path), str(model_path), tmp],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            )
            print(res.stdout, end="", flush=True)
            lines += res.stdout.splitlines()
    meta["load_after"] = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    if not args.no_write:
        print(f"wrote {write_json(meta, lines)}")


if __name__ == "__main__":
    main()
