"""``infgate promote``: give a version the deployment alias only when its gate passes.

The gate is re-run on the version's latest stored scan first, so a version blocked by
suspected label errors becomes promotable as soon as every blocking finding has a
decision in the relabel queue (or a new scan of fixed data passes).
"""

from __future__ import annotations

import logging
from typing import Any

from infgate.errors import GateBlockedError
from infgate.gate.core import GateConfig, GateVerdict, load_gate_config
from infgate.registry.core import resolve_model_version, set_alias

__all__ = ["promote", "recheck"]

log = logging.getLogger(__name__)


def recheck(
    store: Any,
    ref: str,
    *,
    version: str | None = None,
    config: GateConfig | None = None,
    tracking_uri: str | None = None,
) -> tuple[int, GateVerdict]:
    """Re-run the gate on the version's latest scan (queue decisions count as reviews).

    Returns:
        ``(scan id, verdict)``; the verdict is recorded in SQL and MLflow like any gate run.

    Raises:
        GateBlockedError: the version has never been scanned.
    """
    from infgate.scan.stages import gate_stage, load_stage

    mv = resolve_model_version(ref, version=version, tracking_uri=tracking_uri)
    info = store.latest_scan(mv.name, mv.version)
    if info is None:
        reason = {"message": f"{mv.uri} has no infgate scan yet; run `infgate scan {mv.uri}`"}
        raise GateBlockedError(f"refusing to promote {mv.uri}: it was never scanned", [reason])
    loaded = load_stage(mv.uri, data_uri=info.dataset_uri, tracking_uri=tracking_uri)
    verdict = gate_stage(store, loaded, info.id, config=config, tracking_uri=tracking_uri)
    return info.id, verdict


def promote(
    store: Any,
    ref: str,
    *,
    version: str | None = None,
    alias: str | None = None,
    config: GateConfig | None = None,
    tracking_uri: str | None = None,
) -> GateVerdict:
    """Point the deployment alias at the version if (and only if) its gate passes.

    Raises:
        GateBlockedError: the gate blocks; ``.reasons`` lists each failed check with its
            observed value.
    """
    config = config or load_gate_config()
    alias = alias or config.deployment_alias
    scan_id, verdict = recheck(
        store, ref, version=version, config=config, tracking_uri=tracking_uri
    )
    mv = resolve_model_version(ref, version=version, tracking_uri=tracking_uri)
    if not verdict.passed:
        raise GateBlockedError(
            f"refusing to give {mv.uri} the alias {alias!r}: the gate blocks it (scan {scan_id}): "
            f"{verdict.summary()}",
            verdict.reasons,
        )
    set_alias(mv, alias, tracking_uri=tracking_uri)
    log.info("promoted %s to alias %r (scan %d passed)", mv.uri, alias, scan_id)
    return verdict
