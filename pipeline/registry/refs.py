"""The two things every registry module needs: a resolved model version and a client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelVersionRef", "client", "mlflow_uris"]


@dataclass(frozen=True)
class ModelVersionRef:
    """One resolved registry model version.

    Attributes:
        name: registered model name.
        version: version number as a string.
        run_id: the run that logged the model (``None`` when registered from elsewhere).
        source: the model's storage URI.
        tags: model-version tags at resolution time.
        alias: the alias it was resolved through, if any.
    """

    name: str
    version: str
    run_id: str | None = None
    source: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    alias: str | None = None

    @property
    def uri(self) -> str:
        """``models:/name/version``: pinned, unlike an alias."""
        return f"models:/{self.name}/{self.version}"


def client(tracking_uri: str | None = None) -> Any:
    """An ``MlflowClient`` for ``tracking_uri`` (default: MLflow's own resolution)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@contextmanager
def mlflow_uris(tracking_uri: str | None) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs at ``tracking_uri`` for the
    calls that only read them (``mlflow.pytorch.load_model``, fluent logging), and restore
    the caller's afterwards: a library call never leaves the global state changed."""
    import mlflow

    if not tracking_uri:
        yield
        return
    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
