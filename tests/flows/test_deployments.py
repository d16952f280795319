"""Deployment declarations: ``flows/serve.py`` and ``flows/prefect.yaml`` agree and point at
real flows."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_served_deployments() -> None:
    from infgate.flows.serve import build_deployments

    deps = {(d.flow_name, d.name): d for d in build_deployments(sweep_cron="*/30 * * * *")}
    assert set(deps) == {
        ("scan-model-version", "on-demand"),
        ("registry-sweep", "nightly"),
        ("relabel", "on-demand"),
        ("influence-stage", "local"),
    }
    assert deps[("registry-sweep", "nightly")].schedules[0].schedule.cron == "*/30 * * * *"
    trigger = deps[("scan-model-version", "on-demand")].triggers[0]
    assert trigger.expect == {"mlflow.model_version.created"}


def test_prefect_yaml_entrypoints_exist() -> None:
    spec = yaml.safe_load((ROOT / "flows" / "prefect.yaml").read_text())
    pools = set()
    for dep in spec["deployments"]:
        module_path, func = dep["entrypoint"].split(":")
        module = importlib.import_module(
            "infgate." + module_path.removesuffix(".py").replace("/", ".")
        )
        assert callable(getattr(module, func)), dep["entrypoint"]
        pools.add(dep["work_pool"]["name"])
    assert pools == {"infgate-cpu", "infgate-gpu"}
