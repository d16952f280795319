"""Fixtures of the model-family tests: each family of ``infgate.examples.networks`` trained,
logged (MLflow's default ``pt2`` format, or pickled) and registered on the session's real
``mlflow server``, built lazily and once per session; the ``infgate`` CLI's ``main()``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from infgate.examples.networks import TrainOptions
from infgate.examples.registry_models import (
    FamilyData,
    RegisteredNetwork,
    family_data,
    register_network,
)

from tests.services import MlflowServer

#: Per family: rows and how it trains (the MLP to convergence, the others a few epochs).
SETUPS: dict[str, dict] = {
    "mlp": {
        "rows": (300, 100),
        "options": TrainOptions(
            optimizer="sgd",
            lr=0.05,
            epochs=300,
            until_converged=True,
            tol=1e-4,
            weight_decay=1e-3,
            batch_size=300,
        ),
    },
    "resnet": {
        "rows": (200, 50),
        "options": TrainOptions(
            optimizer="adam", lr=1e-3, epochs=4, weight_decay=1e-3, batch_size=32
        ),
    },
    "conv1d": {
        "rows": (300, 100),
        "options": TrainOptions(
            optimizer="adam", lr=3e-3, epochs=15, weight_decay=1e-3, batch_size=32
        ),
    },
    "transformer": {
        "rows": (300, 100),
        "options": TrainOptions(
            optimizer="adam", lr=3e-3, epochs=8, weight_decay=1e-3, batch_size=32
        ),
    },
}


@dataclass(frozen=True)
class Registered:
    """A registered family version, its data and how it was trained."""

    reg: RegisteredNetwork
    data: FamilyData
    options: TrainOptions
    server: MlflowServer


Registry = Callable[[str, str], Registered]


@pytest.fixture(scope="session")
def registered(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """``registered("resnet", "pt2")``: that family trained and registered (once per session).

    ``pt2`` versions link their training data as the run's dataset input, ``pickle`` ones
    through the version tag ``infgate.train_data``.
    """
    cache: dict[tuple[str, str], Registered] = {}

    def get(kind: str, flavour: str) -> Registered:
        if (kind, flavour) not in cache:
            setup = SETUPS[kind]
            n_train, n_eval = setup["rows"]
            data = family_data(kind, n_train=n_train, n_eval=n_eval, noise=0.1, seed=7)  # type: ignore[arg-type]
            reg = register_network(
                data,
                name=f"families-{kind}-{flavour}",
                workdir=tmp_path_factory.mktemp(f"{kind}-{flavour}"),
                tracking_uri=mlflow_server.uri,
                options=setup["options"],
                serialization_format=None if flavour == "pt2" else "pickle",
                data_link="input" if flavour == "pt2" else "tag",
            )
            cache[(kind, flavour)] = Registered(reg, data, setup["options"], mlflow_server)
        return cache[(kind, flavour)]

    return get


@dataclass(frozen=True)
class Outcome:
    """What a shell would see: exit status, stdout, stderr."""

    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    """``cli("scan", ...)``: the console script's ``main()`` with these arguments."""
    from infgate.plugins.cli.app import main

    def _run(*args: str | Path) -> Outcome:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return _run
