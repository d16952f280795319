"""``infgate promote``: give a version the deployment alias only when its gate passes.

The gate is re-run on the version's latest stored scan first, so a version blocked by
suspected label errors becomes promotable as soon as every blocking finding has a
decision in the relabel queue (or a new scan of fixed data passes).
"""

from __future__ import annotations

import logging
from typing import Any

from infgate.config import ScanConfig
from infgate.errors import GateBlockedError
from infgate.gate import GateCheck, GateVerdict
from infgate.registry.core import resolve_model_version, set_alias
from infgate.settings import Settings

__all__ = ["promote", "recheck"]

log = logging.getLogger(__name__)


def recheck(
    store: Any,
    ref: str,
    *,
    version: str | None = None,
    config: ScanConfig | None = None,
    settings: Settings | None = None,
) -> tuple[int, GateVerdict]:
    """Re-run the gate on the version's latest scan (queue decisions count as reviews).

    Returns:
        ``(scan id, verdict)``; the verdict is recorded in SQL and MLflow like any gate run.

    Raises:
        GateBlockedError: the version has never been scanned.
    """
    from infgate.scan.stages import gate_stage, load_stage

    settings = settings or Settings.from_env()
    mv = resolve_model_version(ref, version=version, tracking_uri=settings.tracking_uri)
    info = store.latest_scan(mv.name, mv.version)
    if info is None:
        reason = GateCheck(
            name="scanned",
            suite="findings",
            success=False,
            observed="no scan",
            threshold={},
            message=f"{mv.uri} has no infgate scan yet; run `infgate scan {mv.uri}`",
        )
        raise GateBlockedError(f"refusing to promote {mv.uri}: it was never scanned", [reason])
    loaded = load_stage(mv.uri, data_uri=info.dataset_uri, config=config, settings=settings)
    verdict = gate_stage(store, loaded, info.id, config or ScanConfig(), settings)
    return info.id, verdict


def promote(
    store: Any,
    ref: str,
    *,
    version: str | None = None,
    alias: str | None = None,
    config: ScanConfig | None = None,
    settings: Settings | None = None,
) -> GateVerdict:
    """Point the deployment alias at the version if (and only if) its gate passes.

    Raises:
        GateBlockedError: the gate blocks; ``.reasons`` lists each failed check with its
            observed value.
    """
    settings = settings or Settings.from_env()
    alias = alias or settings.deployment_alias
    scan_id, verdict = recheck(store, ref, version=version, config=config, settings=settings)
    mv = resolve_model_version(ref, version=version, tracking_uri=settings.tracking_uri)
    if not verdict.passed:
        raise GateBlockedError(
            f"refusing to give {mv.uri} the alias {alias!r}: the gate blocks it (scan {scan_id}): "
            f"{verdict.summary()}",
            list(verdict.reasons),
        )
    set_alias(mv, alias, tracking_uri=settings.tracking_uri)
    log.info("promoted %s to alias %r (scan %d passed)", mv.uri, alias, scan_id)
    return verdict
