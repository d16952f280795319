"""MLflow registry in and out: resolve a model version, load its model, log scans back.

Model references: ``models:/name@alias``, ``models:/name/version``, or a bare name plus a
version. The version's training and evaluation data (resolution, columns, fit checks) live
in :mod:`infgate.registry.datasets`; the names below re-export them for older imports.
"""

from __future__ import annotations

import functools
import logging
import re

from infgate.errors import InvalidInputError, RegistryError
from infgate.registry.model_state import check_eval_mode
from infgate.registry.refs import ModelVersionRef, client, mlflow_uris
from torch import nn

__all__ = [
    "ModelVersionRef",
    "alias_version",
    "client",
    "load_model",
    "resolve_model_version",
    "set_alias",
    "withdraw_alias",
]

log = logging.getLogger(__name__)


_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")


def resolve_model_version(
    ref: str, *, version: str | int | None = None, tracking_uri: str | None = None
) -> ModelVersionRef:
    """Resolve ``models:/name@alias``, ``models:/name/version`` or ``name`` + ``version``.

    Raises:
        InvalidInputError: a malformed reference.
        RegistryError: the model, alias or version does not exist.
    """
    from mlflow.exceptions import MlflowException

    alias: str | None = None
    m = _URI.match(ref.strip())
    if m:
        if version is not None:
            raise InvalidInputError(
                f"give a version either in the URI or separately, not both: {ref!r}"
            )
        name, alias, version = m["name"], m["alias"], m["version"]
    elif ref.startswith("models:/") or "/" in ref or "@" in ref:
        raise InvalidInputError(
            f"model reference {ref!r} is not models:/name@alias, models:/name/version or a name"
        )
    else:
        name = ref.strip()
        if version is None:
            raise InvalidInputError(f"model {name!r} given without a version or alias")
    c = client(tracking_uri)
    try:
        c.get_registered_model(name)
    except MlflowException as e:
        raise RegistryError(f"no registered model named {name!r}") from e
    try:
        mv = (
            c.get_model_version_by_alias(name, alias)
            if alias
            else c.get_model_version(name, str(version))
        )
    except MlflowException as e:
        what = f"alias {alias!r}" if alias else f"version {version!r}"
        raise RegistryError(f"registered model {name!r} has no {what}") from e
    return ModelVersionRef(
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id or None,
        source=mv.source,
        tags=dict(mv.tags or {}),
        alias=alias,
    )


def load_model(mv: ModelVersionRef, *, tracking_uri: str | None = None) -> nn.Module:
    """Load the version's torch model (``pt2`` GraphModule or pickled module), in eval mode.

    Raises:
        InvalidInputError: the version is not a torch module.
        ModelStateError: a ``pt2`` model exported in training mode (see
            :mod:`infgate.registry.model_state`).
    """
    import mlflow
    import mlflow.pytorch

    with mlflow_uris(tracking_uri):
        model = mlflow.pytorch.load_model(mv.uri, map_location="cpu")
    if not isinstance(model, nn.Module):
        raise InvalidInputError(
            f"{mv.uri} did not load as a torch nn.Module, got {type(model).__name__}"
        )
    was_training = model.training
    try:
        model.eval()
        if was_training:
            log.info("%s was saved in training mode; scanning it in eval mode", mv.uri)
    except (NotImplementedError, RuntimeError):  # exported programs refuse mode switches
        log.debug("model %s has no train/eval switch", mv.uri)
    check_eval_mode(model, mv.uri)  # a pt2 graph exported in training mode is refused
    _reload_when_unpickled(model, mv.uri, tracking_uri)
    return model


def _reload_when_unpickled(model: nn.Module, uri: str, tracking_uri: str | None) -> None:
    """Let a ``pt2`` model travel to another process (a Dask worker, a Prefect result).

    ``torch.export``'s GraphModule cannot be pickled (it holds local functions). Each such
    module has a class of its own (``GraphModule.__new__`` makes one per instance), so we
    teach that class alone to pickle as "load ``uri`` from the registry", which the other
    process does once (:func:`_load_cached`). Modules of shared classes (pickled-format
    models) keep their own pickling. Checked by class, not by a trial ``pickle.dumps``, which
    would serialize every weight on every load.
    """
    cls = type(model)
    if not cls.__qualname__.endswith("<locals>.GraphModuleImpl"):  # never patch a shared class
        return
    cls.__reduce_ex__ = lambda self, protocol: (_load_cached, (uri, tracking_uri))  # type: ignore[assignment,method-assign]


@functools.lru_cache(maxsize=8)
def _load_cached(uri: str, tracking_uri: str | None) -> nn.Module:
    """``load_model`` once per process for a version URI (what an unpickled pt2 model is)."""
    return load_model(
        resolve_model_version(uri, tracking_uri=tracking_uri), tracking_uri=tracking_uri
    )


def alias_version(name: str, alias: str, *, tracking_uri: str | None = None) -> str | None:
    """The version ``alias`` points to, or ``None``."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def set_alias(mv: ModelVersionRef, alias: str, *, tracking_uri: str | None = None) -> None:
    """Point ``alias`` at the version (callers check the gate first: see ``infgate.gate.core``)."""
    client(tracking_uri).set_registered_model_alias(mv.name, alias, mv.version)


def withdraw_alias(mv: ModelVersionRef, alias: str, *, tracking_uri: str | None = None) -> bool:
    """Remove ``alias`` if it points at this version; returns whether it did."""
    if alias_version(mv.name, alias, tracking_uri=tracking_uri) != mv.version:
        return False
    client(tracking_uri).delete_registered_model_alias(mv.name, alias)
    log.warning("removed alias %r from blocked version %s", alias, mv.uri)
    return True
