"""``make demo``: the main job end to end on embedded defaults.

Trains softmax regression on scikit-learn's bundled digits with a fraction of labels
flipped, registers it in a local MLflow, runs the scan flow, and shows the gate blocking
the version with its reasons and the relabel queue filling up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from infgate.data.training import TrainingData, flip_labels
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_digits

__all__ = ["digits_with_flips", "run_demo"]

WEIGHT_DECAY = 1e-3


def digits_with_flips(noise: float, seed: int) -> tuple[TrainingData, np.ndarray, np.ndarray]:
    """Digits (1,797 8x8 images, pixels scaled to [0, 1]) with ``noise`` of labels flipped.

    Returns:
        ``(data with noisy labels, flipped mask, clean labels)``.
    """
    d = load_digits()
    rng = np.random.default_rng(seed)
    noisy, flipped = flip_labels(d.target, noise, 10, rng)
    data = TrainingData(
        features=(d.data / 16.0).astype(np.float32),
        labels=noisy,
        classes=tuple(str(c) for c in range(10)),
        image_shape=(8, 8),
        source_uri="sklearn.datasets.load_digits",
        name="digits",
    )
    return data, flipped, d.target.astype(np.int64)


def run_demo(
    *, noise: float = 0.10, seed: int = 0, top: int = 10, workdir: str | Path = "demo_out"
) -> dict[str, float]:
    """The main job on embedded defaults; returns recall figures and the verdict.

    Trains softmax regression on digits with ``noise`` of the labels flipped, registers it in
    a local MLflow (``sqlite:///<workdir>/mlflow.db``) with the training data logged as the
    run's dataset input, runs the ``scan_model_version`` flow on Prefect's ephemeral API,
    shows the gate blocking the version (and ``promote`` refusing it), fills the relabel
    queue and prints where to look.
    """
    import logging
    import warnings

    from infgate.examples.demo_registry import register_model_with_data
    from infgate.plugins.cli.ops import embedded_prefect_env

    embedded_prefect_env()

    console = Console()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    # relative paths keep the printed commands short; they hold from the current directory
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    db_url = f"sqlite:///{work / 'infgate.db'}"
    for noisy in ("alembic", "mlflow", "great_expectations", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)  # MLflow schema hints, torch
    data, flipped, clean = digits_with_flips(noise, seed)
    console.rule("[bold]infgate demo: a model trained on mislabeled digits meets the gate")
    console.print(
        f"1. {len(data):,} training examples (scikit-learn digits), {int(flipped.sum())} labels "
        f"flipped ({noise:.0%}); softmax regression trained with L-BFGS, "
        f"weight decay {WEIGHT_DECAY}"
    )
    reg = register_model_with_data(
        data,
        name="digits-demo",
        workdir=work,
        artifact_root=work / "mlartifacts",
        tracking_uri=tracking_uri,
        true_labels=clean,
        weight_decay=WEIGHT_DECAY,
        seed=seed,
    )
    console.print(
        f"2. registered [bold]models:/{reg.name}/{reg.version}[/bold] in MLflow ({tracking_uri}); "
        f"training data logged as the run's dataset input ({reg.data_path.name})"
    )
    console.print(
        "3. running the scan flow on Prefect's ephemeral API (load, influence, detect, store, "
        "gate, report; about a minute on 2 cores) ..."
    )
    from infgate.flows.scan import scan_model_version  # the demo drives the real flow

    for name in (
        "prefect",
        "great_expectations",
        "great_expectations.data_context.types.base",  # GX resets its root logger's level
        "mlflow",
        "alembic",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)

    report_dir = work / f"report-{reg.name}-v{reg.version}"
    state = scan_model_version(
        f"models:/{reg.name}/{reg.version}",
        options={"influence": {"damping": WEIGHT_DECAY}},
        db_url=db_url,
        tracking_uri=tracking_uri,
        report_dir=str(report_dir),
        return_state=True,
    )
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):
        raise RuntimeError(f"the scan flow failed: {state.message}")
    ranking = pd.read_csv(report_dir / "findings.csv", dtype={"example_id": str})
    _print_suspects(console, ranking, data, clean, top)
    metrics = summary["metrics"]
    console.print(
        f"   suspects: {int(metrics['n_suspects'])} ({metrics['suspect_rate']:.1%} of the data); "
        f"checking the top 10% of the ranking finds {metrics.get('recall_at_10pct', 0):.0%} of the "
        f"flipped labels, the top 20% finds {metrics.get('recall_at_20pct', 0):.0%} "
        f"(random: 10% / 20%)"
    )
    flow_state = "Failed (gate blocked)" if state.is_failed() else "Completed"
    console.print(
        f"4. gate verdict for scan {summary['scan_id']}: [bold red]{summary['verdict'].upper()}"
        f"[/bold red] — flow run state: {flow_state}"
        if summary["verdict"] != "passed"
        else f"4. gate verdict: [green]{summary['verdict']}[/green]"
    )
    for r in summary["reasons"]:
        console.print(f"   [red]x[/red] {r['message']}")
    console.print(
        f"   MLflow tags on v{reg.version}: infgate.gate={summary['verdict']}, "
        f"infgate.scan_id={summary['scan_id']}, infgate.reason=..."
    )
    from infgate.errors import GateBlockedError
    from infgate.scan.promote import promote
    from infgate.store import Store

    store = Store.from_url(db_url)
    try:
        promote(store, f"models:/{reg.name}/{reg.version}", tracking_uri=tracking_uri)
        console.print("5. `infgate promote` gave the version the alias 'champion'")
    except GateBlockedError as e:
        console.print(f"5. `infgate promote` [red]refuses[/red]: {len(e.reasons)} failed check(s)")
    console.print(f"6. relabel queue: {summary['queued']} suspects waiting for annotators")
    console.rule("where to look")
    console.print(f"  MLflow UI:    mlflow ui --backend-store-uri {tracking_uri}")
    console.print(f"  review page:  infgate annotator add alice --db {db_url}   (prints a token)")
    console.print(f"                infgate ui serve --db {db_url}")
    console.print(
        f"  promote:      infgate promote models:/{reg.name}/{reg.version} "
        f"--db {db_url} --tracking-uri {tracking_uri}"
    )
    console.print(f"  report files: {report_dir}")
    return {
        "recall@10%": float(metrics.get("recall_at_10pct", 0.0)),
        "recall@20%": float(metrics.get("recall_at_20pct", 0.0)),
        "n_suspects": float(metrics["n_suspects"]),
        "blocked": float(summary["verdict"] == "blocked"),
        "queued": float(summary["queued"]),
    }


def _print_suspects(
    console: Console, ranking: pd.DataFrame, data: TrainingData, clean: np.ndarray, top: int
) -> None:
    pos = {str(e): i for i, e in enumerate(data.example_ids)}
    table = Table(title=f"Top {top} suspected label errors (higher score = more suspicious)")
    for col in (
        "rank",
        "example_id",
        "score",
        "given",
        "suggested",
        "confidence",
        "true",
        "flipped?",
    ):
        table.add_column(col, justify="right")
    for _, r in ranking.head(top).iterrows():
        i = pos[str(r["example_id"])]
        table.add_row(
            str(r["rank"]),
            str(r["example_id"]),
            f"{float(r['score']):.3f}",
            str(r["given_label"]),
            str(r["suggested_label"]),
            f"{float(r['suggestion_confidence']):.2f}",
            str(clean[i]),
            "yes" if clean[i] != data.labels[i] else "no",
        )
    console.print(table)
