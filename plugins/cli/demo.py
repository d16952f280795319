"""``make demo``: the main job end to end on embedded defaults.

Trains softmax regression on scikit-learn's bundled digits with a fraction of labels
flipped (a quarter held out with clean labels as the evaluation data), registers it in a
local MLflow, runs the scan flow, and shows the gate blocking the version with its reasons
and the relabel queue filling up.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from infgate.plugins.cli._common import console, guarded, print_table

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from infgate.data.training import TrainingData

__all__ = ["demo", "digits_with_flips", "held_out_split", "run_demo"]

WEIGHT_DECAY = 1e-3
#: share of the digits held out, with clean labels, as the scan's evaluation data.
EVAL_SHARE = 0.25
DEMO_MODEL = "digits-demo"
#: MLflow model-version tag naming the demo run (noise, seed, data) that registered it.
DEMO_KEY_TAG = "infgate.demo_key"


@guarded
def demo(
    noise: Annotated[float, typer.Option(help="Fraction of training labels to flip.")] = 0.10,
    seed: Annotated[int, typer.Option(help="Seed for the label flips and the model init.")] = 0,
    top: Annotated[int, typer.Option(min=1, help="How many top suspects to print.")] = 10,
    workdir: Annotated[
        Path, typer.Option(help="Where the demo's MLflow, store and reports live.")
    ] = Path("demo_out"),
) -> None:
    """Run the main job end to end on embedded defaults (scikit-learn digits).

    A re-run with the same noise and seed reuses its model version and queues nothing twice.
    """
    run_demo(noise=noise, seed=seed, top=top, workdir=workdir)


def digits_with_flips(noise: float, seed: int) -> tuple[TrainingData, np.ndarray, np.ndarray]:
    """Digits (1,797 8x8 images, pixels scaled to [0, 1]) with ``noise`` of labels flipped.

    Returns:
        ``(data with noisy labels, flipped mask, clean labels)``.
    """
    import numpy as np
    from infgate.data.training import TrainingData, flip_labels
    from sklearn.datasets import load_digits

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


def held_out_split(
    data: TrainingData, flipped: np.ndarray, clean: np.ndarray, seed: int
) -> tuple[TrainingData, np.ndarray, np.ndarray, TrainingData]:
    """Hold out a stratified ``EVAL_SHARE`` of the rows with their clean labels: the curated
    test set a team scans against (the noise model's calibration, the evaluation
    neighbours, the count's interval and the mismatch test use it).

    Returns:
        ``(training data, its flipped mask, its clean labels, evaluation data)``.
    """
    import dataclasses

    import numpy as np
    from sklearn.model_selection import train_test_split

    _, ev = train_test_split(
        np.arange(len(data)), test_size=EVAL_SHARE, stratify=clean, random_state=seed
    )
    keep = np.ones(len(data), bool)
    keep[ev] = False
    train = dataclasses.replace(
        data.with_labels(data.labels, keep=keep), source_uri=data.source_uri
    )
    evaluation = dataclasses.replace(
        data.with_labels(clean, keep=~keep), source_uri=data.source_uri, name="digits-eval"
    )
    return train, flipped[keep], clean[keep], evaluation


def _demo_key(noise: float, seed: int, data: TrainingData, evaluation: TrainingData) -> str:
    """What makes two demo runs the same model: noise, seed, weight decay and the data."""
    raw = f"{noise!r}|{seed}|{WEIGHT_DECAY!r}|{data.content_hash}|{evaluation.content_hash}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _reusable_version(name: str, key: str, tracking_uri: str, data_path: Path) -> str | None:
    """The newest registered version of ``name`` when an earlier demo run registered it with
    the same key (and its training file is still there), else ``None``."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    if (
        not versions
        or not data_path.is_file()
        or not data_path.with_name(data_path.name.replace("-train.", "-eval.")).is_file()
    ):
        return None
    # only the newest: each registration rewrites the one training file
    newest = max(versions, key=lambda v: int(v.version))
    return str(newest.version) if newest.tags.get(DEMO_KEY_TAG) == key else None


def run_demo(
    *, noise: float = 0.10, seed: int = 0, top: int = 10, workdir: str | Path = "demo_out"
) -> dict[str, float]:
    """The main job on embedded defaults; returns recall figures and the verdict.

    Trains softmax regression on digits with ``noise`` of the labels flipped (a stratified
    ``EVAL_SHARE`` held out with clean labels), registers it in a local MLflow
    (``sqlite:///<workdir>/mlflow.db``) with the training data logged as the run's dataset
    input and the held-out rows named by the version's ``infgate.eval_data`` tag, runs the
    ``scan_model_version`` flow on Prefect's ephemeral API, shows the gate blocking the
    version (and ``promote`` refusing it), fills the relabel queue and prints where to look.

    Idempotent: a re-run with the same noise and seed reuses the registered version, so the
    scan is the same stored scan and no example is queued twice.
    """
    import logging

    import pandas as pd
    from infgate.settings import quiet_third_party_env

    quiet_third_party_env()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    # relative paths keep the printed commands short; they hold from the current directory
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    db_url = f"sqlite:///{work / 'infgate.db'}"
    for noisy in ("alembic", "mlflow", "great_expectations", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # two MLflow hints about how the demo itself logs its data (a local Parquet file, integer
    # labels): true and harmless here, and not something a demo user can act on
    import warnings

    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
    data, flipped, clean, evaluation = held_out_split(*digits_with_flips(noise, seed), seed)
    console.rule("[bold]infgate demo: a model trained on mislabeled digits meets the gate")
    console.print(
        f"1. {len(data):,} training examples (scikit-learn digits), {int(flipped.sum())} labels "
        f"flipped ({flipped.mean():.0%}), {len(evaluation):,} held out with clean labels as "
        f"evaluation data; softmax regression trained with L-BFGS, weight decay {WEIGHT_DECAY}"
    )
    name, key = DEMO_MODEL, _demo_key(noise, seed, data, evaluation)
    version = _reusable_version(name, key, tracking_uri, work / f"{name}-train.parquet")
    if version is None:
        from infgate.examples.demo_registry import register_model_with_data
        from mlflow import MlflowClient

        reg = register_model_with_data(
            data,
            name=name,
            workdir=work,
            artifact_root=work / "mlartifacts",
            tracking_uri=tracking_uri,
            true_labels=clean,
            weight_decay=WEIGHT_DECAY,
            seed=seed,
            eval_data=evaluation,
        )
        version = reg.version
        MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_model_version_tag(
            name, version, DEMO_KEY_TAG, key
        )
        console.print(
            f"2. registered [bold]models:/{name}/{version}[/bold] in MLflow ({tracking_uri}); "
            f"training data logged as the run's dataset input ({reg.data_path.name}), "
            f"evaluation data named by the version's infgate.eval_data tag"
        )
    else:
        console.print(
            f"2. reusing [bold]models:/{name}/{version}[/bold] in MLflow ({tracking_uri}): an "
            "earlier demo run registered this model on this data"
        )
    console.print(
        "3. running the scan flow on Prefect's ephemeral API (load, influence, detect, store, "
        "gate, report; about a minute on 2 cores) ..."
    )
    from infgate.config import ScanConfig
    from infgate.flows.scan import scan_model_version  # the demo drives the real flow

    for logger in (
        "prefect",
        "great_expectations",
        "great_expectations.data_context.types.base",  # GX resets its root logger's level
        "mlflow",
        "alembic",
    ):
        logging.getLogger(logger).setLevel(logging.WARNING)

    ref = f"models:/{name}/{version}"
    report_dir = work / f"report-{name}-v{version}"
    config = ScanConfig().with_overrides(
        **{"influence.damping": WEIGHT_DECAY, "report.directory": str(report_dir)}
    )
    state = scan_model_version(
        ref, config=config, db_url=db_url, tracking_uri=tracking_uri, return_state=True
    )
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):
        raise RuntimeError(f"the scan flow failed: {state.message}")
    ranking = pd.read_csv(report_dir / "findings.csv", dtype={"example_id": str})
    _print_suspects(ranking, data, clean, top)
    metrics = summary["metrics"]
    spread = (
        f"; bootstrap interval {int(metrics['expected_label_errors_lower'])}-"
        f"{int(metrics['expected_label_errors_upper'])}"
        if "expected_label_errors_lower" in metrics
        else ""
    )
    console.print(
        f"   suspects: {int(metrics['n_suspects'])} ({metrics['suspect_rate']:.1%} of the data"
        f"{spread}); "
        f"checking the top 10% of the ranking finds {metrics.get('recall_at_10pct', 0):.0%} of the "
        f"flipped labels, the top 20% finds {metrics.get('recall_at_20pct', 0):.0%} "
        f"(random: 10% / 20%)"
    )
    if "mismatch_p_value" in metrics:  # a random split: the mismatch test should not reject
        console.print(
            f"   train vs evaluation mismatch test: p = {metrics['mismatch_p_value']:.3g} "
            f"(alpha {config.mismatch.alpha:g})"
        )
    flow_state = "Failed (gate blocked)" if state.is_failed() else "Completed"
    console.print(
        f"4. gate verdict for scan {summary['scan_id']}: [bold red]{summary['verdict'].upper()}"
        f"[/bold red] — flow run state: {flow_state}"
        if summary["verdict"] != "passed"
        else f"4. gate verdict: [green]{summary['verdict']}[/green]"
    )
    for r in summary["reasons"]:
        message = r.get("message") if isinstance(r, dict) else getattr(r, "message", r)
        console.print(f"   [red]x[/red] {message}", highlight=False)
    console.print(
        f"   MLflow tags on v{version}: infgate.gate={summary['verdict']}, "
        f"infgate.scan_id={summary['scan_id']}, infgate.reason=..."
    )
    from infgate.errors import GateBlockedError
    from infgate.review.queue import queue_stats
    from infgate.scan.promote import promote
    from infgate.settings import Settings
    from infgate.store import Store

    store = Store.from_url(db_url)
    try:
        promote(store, ref, config=config, settings=Settings(tracking_uri=tracking_uri))
        console.print("5. `infgate promote` gave the version the alias 'champion'")
    except GateBlockedError as e:
        console.print(f"5. `infgate promote` [red]refuses[/red]: {len(e.reasons)} failed check(s)")
    waiting = queue_stats(store, scan_id=int(summary["scan_id"])).left
    console.print(
        f"6. relabel queue: {waiting} suspects waiting for annotators "
        f"({summary['queued']} added by this run)"
    )
    console.rule("where to look")
    console.print(f"  MLflow UI:    mlflow ui --backend-store-uri {tracking_uri}")
    console.print(f"  review page:  infgate annotator add alice --db {db_url}   (prints a token)")
    console.print(f"                infgate ui serve --db {db_url}")
    console.print(
        f"  promote:      infgate promote {ref} --db {db_url} --tracking-uri {tracking_uri}"
    )
    console.print(f"  report files: {report_dir}")
    return {
        "recall@10%": float(metrics.get("recall_at_10pct", 0.0)),
        "recall@20%": float(metrics.get("recall_at_20pct", 0.0)),
        "n_suspects": float(metrics["n_suspects"]),
        "blocked": float(summary["verdict"] == "blocked"),
        "queued": float(summary["queued"]),
        "waiting": float(waiting),
    }


def _print_suspects(ranking: pd.DataFrame, data: TrainingData, clean: np.ndarray, top: int) -> None:
    pos = {str(e): i for i, e in enumerate(data.example_ids)}
    rows = []
    for _, r in ranking.head(top).iterrows():
        i = pos[str(r["example_id"])]
        rows.append(
            (
                r["rank"],
                r["example_id"],
                f"{float(r['score']):.3f}",
                r["given_label"],
                r["suggested_label"],
                f"{float(r['suggestion_confidence']):.2f}",
                clean[i],
                "yes" if clean[i] != data.labels[i] else "no",
            )
        )
    console.print(f"[bold]Top {top} suspected label errors[/] (higher score = more suspicious)")
    columns = ["rank", "example_id", "score", "given", "suggested", "confidence", "true"]
    print_table([*columns, "flipped?"], rows, numeric=["rank", "score", "confidence"])
