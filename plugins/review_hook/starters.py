"""What the receiver does with an accepted event: start one flow run, in the background.

* :class:`EmbeddedStarter` runs ``scan_model_version`` in-process on a worker thread (one
  at a time, in arrival order): no Prefect server or worker needed (the flow uses the
  ephemeral API or whatever ``PREFECT_API_URL`` points to).
* :class:`DeploymentStarter` asks a Prefect server to run the ``scan-model-version``
  deployment (``infgate flows serve`` or a worker picks it up).
* :class:`EventStarter` starts nothing itself: it emits the ``mlflow.model_version.created``
  Prefect event that the ``scan-model-version/on-demand`` deployment's trigger (or any
  automation) turns into a flow run.

Exactly one of them starts a scan per delivery: the first two emit no trigger event (with
``infgate flows serve`` running, the deployment's trigger would start a second scan of the
same version). Every starter handles ``enforce`` (alias withdrawal) itself. All answer
:meth:`submit` at once; the HTTP handler never waits on a scan.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from infgate.config import ScanConfig
from infgate.plugins.review_hook.app import ScanRequest

__all__ = [
    "DeploymentStarter",
    "EmbeddedStarter",
    "EventStarter",
    "Started",
    "Starter",
    "enforce_gate",
]

log = logging.getLogger(__name__)


class Starter(Protocol):
    """Anything that can start work for a :class:`ScanRequest` without blocking."""

    def submit(self, request: ScanRequest) -> None:
        """Queue the request; return at once."""


@dataclass
class Started:
    """One request the starter began working on (for status pages, tests and benchmarks)."""

    request: ScanRequest
    started_at: float
    finished_at: float | None = None
    outcome: dict[str, Any] = field(default_factory=dict)


def enforce_gate(name: str, version: str, alias: str, tracking_uri: str | None) -> bool:
    """Withdraw ``alias`` from the version unless its gate tag says ``passed``.

    Returns:
        True when the alias was withdrawn.
    """
    from infgate.registry import resolve_model_version, withdraw_alias
    from infgate.registry.scan_run import TAG_GATE

    mv = resolve_model_version(name, version=version, tracking_uri=tracking_uri)
    if mv.tags.get(TAG_GATE) == "passed":
        return False
    return withdraw_alias(mv, alias, tracking_uri=tracking_uri)


class _Worker:
    def __init__(self) -> None:
        self._queue: queue.Queue[ScanRequest | None] = queue.Queue()
        self.started: list[Started] = []
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._loop, name="infgate-hook-worker", daemon=True)
        self._thread.start()

    def submit(self, request: ScanRequest) -> None:
        self._idle.clear()
        self._queue.put(request)

    def _loop(self) -> None:
        while True:
            req = self._queue.get()
            if req is None:
                return
            rec = Started(req, time.time())
            self.started.append(rec)
            try:
                rec.outcome = self.handle(req)
            except Exception as e:  # a failed scan must not kill the worker
                log.exception("work for %s v%s failed", req.model_name, req.version)
                rec.outcome = {"error": f"{type(e).__name__}: {e}"}
            rec.finished_at = time.time()
            if self._queue.empty():
                self._idle.set()

    deployment_alias: str
    tracking_uri: str | None

    def handle(self, request: ScanRequest) -> dict[str, Any]:
        """``enforce`` withdraws the alias from a version not gated ``passed``; anything
        else starts a scan (:meth:`start`)."""
        if request.action == "enforce":
            withdrawn = enforce_gate(
                request.model_name, request.version, self.deployment_alias, self.tracking_uri
            )
            return {"alias_withdrawn": withdrawn}
        return self.start(request)

    def start(self, request: ScanRequest) -> dict[str, Any]:
        raise NotImplementedError

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every submitted request is done (tests, ``hook serve`` shutdown)."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        """Stop the worker after the queued requests."""
        self._queue.put(None)
        self._thread.join(timeout=5)


class EmbeddedStarter(_Worker):
    """Runs ``infgate.flows.scan.scan_model_version`` in this process, one flow run per event."""

    def __init__(
        self,
        *,
        db_url: str | None = None,
        tracking_uri: str | None = None,
        deployment_alias: str = "champion",
        report_root: str | None = None,
        config: ScanConfig | None = None,
    ) -> None:
        self.db_url = db_url
        self.tracking_uri = tracking_uri
        self.deployment_alias = deployment_alias
        self.report_root = report_root
        self.config = config
        super().__init__()

    def start(self, request: ScanRequest) -> dict[str, Any]:
        from infgate.flows.scan import default_config, scan_model_version
        from infgate.settings import Settings

        config = self.config or default_config(Settings.from_env())
        if self.report_root:
            report_dir = f"{self.report_root}/{request.model_name}-v{request.version}"
            config = config.with_overrides(**{"report.directory": report_dir})
        state = scan_model_version(
            f"models:/{request.model_name}/{request.version}",
            config=config,
            db_url=self.db_url,
            tracking_uri=self.tracking_uri,
            return_state=True,
        )
        summary = state.result(raise_on_failure=False)
        out: dict[str, Any] = {
            "state": state.type.value,
            "message": state.message,
            "flow_run_id": str(state.state_details.flow_run_id),
        }
        if isinstance(summary, dict):
            out.update({k: summary.get(k) for k in ("scan_id", "verdict", "queued")})
        return out


class DeploymentStarter(_Worker):
    """Starts a run of a Prefect deployment per event (``scan-model-version/on-demand``)."""

    def __init__(
        self,
        deployment: str = "scan-model-version/on-demand",
        *,
        deployment_alias: str = "champion",
        tracking_uri: str | None = None,
    ) -> None:
        self.deployment = deployment
        self.deployment_alias = deployment_alias
        self.tracking_uri = tracking_uri
        super().__init__()

    def start(self, request: ScanRequest) -> dict[str, Any]:
        from prefect.client.schemas.objects import FlowRun
        from prefect.deployments import run_deployment

        # the delivery id as idempotency key: a delivery that reaches two receiver replicas
        # (or is re-sent after a lost answer) starts one flow run, not two
        run = run_deployment(
            self.deployment,
            parameters={"model": f"models:/{request.model_name}/{request.version}"},
            timeout=0,
            tags=["infgate", "webhook", request.event],
            idempotency_key=f"infgate-hook-{request.delivery_id}",
        )
        return {"flow_run_id": str(cast(FlowRun, run).id)}  # sync call: a FlowRun


class EventStarter(_Worker):
    """Emits the Prefect event for each scan request; a deployment trigger starts the run.

    Needs a Prefect API (``PREFECT_API_URL``): automations live on a running server.
    """

    def __init__(self, *, deployment_alias: str = "champion", tracking_uri: str | None = None):
        self.deployment_alias = deployment_alias
        self.tracking_uri = tracking_uri
        super().__init__()

    def start(self, request: ScanRequest) -> dict[str, Any]:
        from infgate.plugins.review_hook.events import emit_accepted

        event = emit_accepted(request)
        if event is None:
            return {"error": "no Prefect event emitted (PREFECT_API_URL unset or unreachable)"}
        return {"event_id": str(event.id)}
