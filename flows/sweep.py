"""``registry_sweep``: scan every registry model version with no scan of its current data.

Runs on a cron schedule (see ``flows/serve.py`` / ``flows/prefect.yaml``). A version is
skipped only when its latest stored scan covers its current training data AND has a gate
verdict; any other version (never scanned, new data, a scan without a verdict because a
webhook was missed or a run died) is scanned. Versions without resolvable training data are
listed, not failed.

Last, the deployment alias (``Settings.deployment_alias``, default ``champion``) is taken from
any version whose gate tag is not ``passed``: unscanned (no data, or over ``max_scans``) or
blocked. A missed webhook therefore delays a scan until the next sweep but never lets a
version keep the alias. Before it starts, the sweep marks RUNNING runs whose process died
(``kill -9``) as Crashed (:func:`infgate.flows.runtime.crash_orphaned_runs`).
"""

from __future__ import annotations

from infgate.config import ScanConfig
from infgate.flows.runtime import RedactingFlow, crash_orphaned_runs, resolve_db
from infgate.flows.scan import (
    IO_DELAYS,
    IO_RETRIES,
    open_store,
    scan_model_version,
)
from infgate.settings import Settings
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

__all__ = ["guard_deployment_alias", "list_model_versions", "registry_sweep"]


@task(
    name="list-versions", retries=IO_RETRIES, retry_delay_seconds=IO_DELAYS, cache_policy=NO_CACHE
)
def list_model_versions(tracking_uri: str | None, name_filter: str | None) -> list[tuple[str, str]]:
    """Every (name, version) in the registry, newest versions first."""
    from infgate.registry import client

    c = client(tracking_uri)
    query = f"name LIKE '{name_filter}'" if name_filter else None
    versions = (
        c.search_model_versions(query, max_results=10_000)
        if query
        else c.search_model_versions(max_results=10_000)
    )
    out = [(mv.name, str(mv.version)) for mv in versions]
    return sorted(out, key=lambda nv: (nv[0], -int(nv[1]) if nv[1].isdigit() else 0))


@task(name="needs-scan", retries=IO_RETRIES, retry_delay_seconds=IO_DELAYS, cache_policy=NO_CACHE)
def needs_scan(
    name: str,
    version: str,
    db_url: str | None,
    tracking_uri: str | None,
) -> str:
    """``"scan"``, ``"current"`` (the latest scan covers this training data and has a gate
    verdict) or ``"no data: ..."``."""
    from infgate.errors import DataResolutionError
    from infgate.registry import load_training_data, resolve_model_version

    mv = resolve_model_version(name, version=version, tracking_uri=tracking_uri)
    try:
        data = load_training_data(mv, tracking_uri=tracking_uri).data
    except DataResolutionError as e:
        return f"no data: {e}"
    info = open_store(resolve_db(db_url)).latest_scan(name, version)
    current = (
        info is not None
        and info.status == "completed"
        and info.dataset_hash == data.content_hash
        and info.gate is not None
    )
    return "current" if current else "scan"


@task(name="guard-alias", retries=IO_RETRIES, retry_delay_seconds=IO_DELAYS, cache_policy=NO_CACHE)
def guard_deployment_alias(name: str, alias: str, tracking_uri: str | None) -> str | None:
    """Withdraw ``alias`` from ``name``'s version unless its gate tag says ``passed``.

    Returns:
        ``models:/name/version`` of the version the alias was taken from, else ``None``.
    """
    from infgate.registry import alias_version, resolve_model_version
    from infgate.registry import withdraw_alias as withdraw
    from infgate.registry.scan_run import TAG_GATE

    version = alias_version(name, alias, tracking_uri=tracking_uri)
    if version is None:
        return None
    mv = resolve_model_version(name, version=version, tracking_uri=tracking_uri)
    if mv.tags.get(TAG_GATE) == "passed":
        return None
    return mv.uri if withdraw(mv, alias, tracking_uri=tracking_uri) else None


@flow(name="registry-sweep")
def registry_sweep(
    tracking_uri: str | None = None,
    db_url: str | None = None,
    config: ScanConfig | None = None,
    name_filter: str | None = None,
    max_scans: int = 20,
) -> dict[str, list[str]]:
    """Scan versions whose current training data has no scan with a verdict yet (at most
    ``max_scans``), then withdraw the deployment alias from every version not gated passed.

    Args:
        tracking_uri: MLflow tracking/registry URI (default: MLflow's own resolution).
        db_url: the findings store reference (see ``scan_model_version``), passed on as is.
        config: the scan configuration for the scans started.
        name_filter: a ``LIKE`` pattern of registered model names.
        max_scans: scans started by one sweep; the rest wait for the next.

    Returns:
        ``{"scanned", "blocked", "current", "unresolvable", "withdrawn"}``: lists of
        ``models:/name/version`` URIs.
    """
    logger = get_run_logger()
    try:
        crash_orphaned_runs()
    except Exception as e:  # bookkeeping: never stops the sweep itself
        logger.warning("could not check for orphaned flow runs: %s", e)
    settings = Settings.from_env(tracking_uri=tracking_uri)
    result: dict[str, list[str]] = {
        "scanned": [],
        "blocked": [],
        "current": [],
        "unresolvable": [],
        "withdrawn": [],
    }
    versions = list_model_versions(tracking_uri, name_filter)
    for name, version in versions:
        uri = f"models:/{name}/{version}"
        verdict = needs_scan(name, version, db_url, tracking_uri)
        if verdict == "current":
            result["current"].append(uri)
            continue
        if verdict.startswith("no data"):
            result["unresolvable"].append(uri)
            logger.warning("%s: %s", uri, verdict)
            continue
        if len(result["scanned"]) >= max_scans:
            logger.info("max_scans=%d reached; %s waits for the next sweep", max_scans, uri)
            continue
        state = scan_model_version(
            uri,
            config=config,
            db_url=db_url,
            tracking_uri=tracking_uri,
            return_state=True,
        )
        result["scanned"].append(uri)
        if state.is_failed():
            result["blocked"].append(uri)
    for name in sorted({n for n, _ in versions}):
        taken = guard_deployment_alias(name, settings.deployment_alias, tracking_uri)
        if taken:
            result["withdrawn"].append(taken)
    logger.info(
        "sweep: %d scanned (%d blocked), %d current, %d without data; alias %r withdrawn from %d",
        len(result["scanned"]),
        len(result["blocked"]),
        len(result["current"]),
        len(result["unresolvable"]),
        settings.deployment_alias,
        len(result["withdrawn"]),
    )
    return result


RedactingFlow.of(registry_sweep)
