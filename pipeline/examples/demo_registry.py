"""Demo helper: train a small model on digits with planted flips and register it in MLflow.

Used by ``make demo`` (:func:`infgate.plugins.cli.demo.run_demo`), the tests and the benchmark. The
training data is written to Parquet, logged as the run's dataset input
(``mlflow.log_input``, context ``training``), and the model is logged in MLflow's default
``pt2`` format and registered.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from infgate.data.training import TrainingData
from infgate.examples.models import make_classifier, train_classifier

__all__ = ["RegisteredDemo", "register_model_with_data"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisteredDemo:
    """A registered model version and the data it was trained on."""

    name: str
    version: str
    run_id: str
    data_path: Path
    n_flipped: int


def register_model_with_data(
    data: TrainingData,
    *,
    name: str,
    workdir: str | Path,
    tracking_uri: str,
    true_labels: np.ndarray | None = None,
    weight_decay: float = 1e-3,
    seed: int = 0,
    hidden: tuple[int, ...] = (),
    artifact_root: str | Path | None = None,
    eval_data: TrainingData | None = None,
) -> RegisteredDemo:
    """Train softmax regression (or an MLP) on ``data``, log data + model, register a version.

    Args:
        data: training data (labels possibly noisy).
        name: registered model name.
        workdir: where the Parquet file is written.
        tracking_uri: MLflow tracking/registry URI (``sqlite:///...`` or ``http://...``).
        true_labels: clean labels, stored as a ``true_label`` column and named by the
            ``infgate.true_label_column`` tag so reports can draw the recall curve.
        weight_decay: L2 strength of the L-BFGS trainer.
        seed: model initialisation seed.
        hidden: hidden layer widths (``()`` = softmax regression).
        artifact_root: artifact location of a new experiment (default: MLflow's choice).
        eval_data: labelled evaluation rows (labels taken as correct), written beside the
            training file and named by the version's ``infgate.eval_data`` tag, so a scan
            calibrates its noise model and runs its mismatch test on them.
    """
    import mlflow
    import mlflow.pytorch

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    x, y = data.as_tensors()
    model = make_classifier(
        x.shape[1], data.n_classes, hidden=hidden, generator=torch.Generator().manual_seed(seed)
    )
    train_classifier(model, x, y, weight_decay=weight_decay)
    frame = data.to_frame()
    if true_labels is not None:
        frame["true_label"] = np.asarray(true_labels, dtype=np.int64)
    path = (workdir / f"{name}-train.parquet").resolve()
    frame.to_parquet(path, index=False)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment = f"infgate-{name}"
    if artifact_root is not None and mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(
            experiment, artifact_location=Path(artifact_root).resolve().as_uri()
        )
    mlflow.set_experiment(experiment)
    tags = {"infgate.classes": json.dumps(list(data.classes or []))} if data.classes else {}
    if data.image_shape:
        tags["infgate.image_shape"] = "x".join(map(str, data.image_shape))
    if true_labels is not None:
        tags["infgate.true_label_column"] = "true_label"
    if eval_data is not None:
        eval_path = (workdir / f"{name}-eval.parquet").resolve()
        eval_data.to_frame().to_parquet(eval_path, index=False)
        tags["infgate.eval_data"] = str(eval_path)
    with mlflow.start_run(run_name=f"train-{name}") as run:
        mlflow.log_params({"weight_decay": weight_decay, "hidden": str(hidden), "seed": seed})
        ds = mlflow.data.from_pandas(  # type: ignore[attr-defined]
            frame, source=str(path), targets="label", name=f"{name}-train"
        )
        mlflow.log_input(ds, context="training")
        with torch.no_grad():
            acc = float((model(x).argmax(1) == y).float().mean())
        mlflow.log_metric("train_accuracy", acc)
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=data.features[:2],
            pip_requirements=["torch"],  # skips MLflow's slow requirement inference
        )
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name)
    mv = client.create_model_version(
        name, info.model_uri, run_id=run.info.run_id, tags=tags, model_id=info.model_id
    )
    n_flipped = (
        int((np.asarray(true_labels) != data.labels).sum()) if true_labels is not None else 0
    )
    log.info("registered %s version %s (run %s)", name, mv.version, run.info.run_id)
    return RegisteredDemo(name, str(mv.version), run.info.run_id, path, n_flipped)
