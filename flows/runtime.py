"""How infgate's flows start, stop and talk to Prefect: nothing slips through the gate.

* :class:`RedactingFlow`: a flow whose stored parameters never carry a password. Prefect
  stores every flow-run parameter in its database and shows it in the UI; a store URL with a
  password (``postgresql://user:pw@host/db``) is stored with the password masked (``***``),
  while the in-process call still receives the real value. Deployments pass a reference
  instead (:func:`resolve_db`): ``None`` / ``"env:INFGATE_DB_URL"`` (the worker's
  environment), ``"secret:<block>"`` (a Prefect Secret block), or a URL without a password.
* A blocked gate is a verdict, not an engine error: a deployment run that ends ``Failed``
  makes Prefect's engine re-raise the state on the way out and log it as "Engine execution
  exited with unexpected exception" with a traceback ("dict cannot be resolved into an
  exception"). :func:`mark_gate_blocked` records the run and a filter on Prefect's flow-run
  logger drops that one record for it; every other error keeps its traceback.
* :func:`handle_termination`: SIGTERM/SIGHUP end the process through ``SystemExit``, so a
  flow run in progress is marked Crashed by Prefect's engine and the ephemeral Prefect API
  server (a ``uvicorn`` child process, stopped by an ``atexit`` hook) is stopped, not orphaned.
* :func:`crash_orphaned_runs`: after ``kill -9`` nothing runs at exit; each infgate flow run
  tags itself with its host and process id (:func:`tag_process`), and the next start (the
  registry sweep, or a CLI at start-up) marks RUNNING runs whose process is gone as Crashed.
  A long-running Prefect server can do the same from heartbeats: set
  ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` and add Prefect's zombie-detection automation.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import threading
from collections.abc import Iterable
from typing import Any

from infgate.errors import ConfigError
from prefect import Flow

__all__ = [
    "RedactingFlow",
    "crash_orphaned_runs",
    "handle_termination",
    "mark_gate_blocked",
    "redact",
    "resolve_db",
    "tag_process",
    "tag_this_run",
]

log = logging.getLogger(__name__)

_PASSWORD_IN_URL = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):[^@/?#\s]*@")
MASK = "***"
PID_TAG = "infgate-pid"


def redact(value: Any) -> Any:
    """``value`` with every ``scheme://user:password@`` password replaced by ``***``
    (strings, and strings inside dicts, lists and tuples)."""
    if isinstance(value, str):
        return _PASSWORD_IN_URL.sub(lambda m: f"{m['head']}:{MASK}@", value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


class RedactingFlow(Flow):  # type: ignore[type-arg]
    """A Prefect flow whose parameters are stored with URL passwords masked."""

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """Prefect's JSON form of the parameters, passwords masked (what Prefect stores)."""
        return {k: redact(v) for k, v in super().serialize_parameters(parameters).items()}

    def with_options(self, *args: Any, **kwargs: Any) -> RedactingFlow:
        """Prefect's ``with_options``, still redacting."""
        new = super().with_options(*args, **kwargs)
        new.__class__ = RedactingFlow
        return new  # type: ignore[return-value]

    @classmethod
    def of(cls, flow: Flow) -> RedactingFlow:  # type: ignore[type-arg]
        """``flow`` (made by ``@prefect.flow``) turned into a redacting flow, in place."""
        flow.__class__ = cls
        return flow  # type: ignore[return-value]


def resolve_db(ref: str | None, environ: Any = None) -> str | None:
    """The findings-store URL a flow parameter refers to (resolved inside the flow run).

    Args:
        ref: ``None`` (the environment's ``INFGATE_DB_URL``, via Settings), ``"env:NAME"``
            (that variable), ``"secret:NAME"`` (a Prefect Secret block) or a URL.
        environ: the environment to read (default ``os.environ``).

    Returns:
        The URL, or ``None`` to let :class:`~infgate.settings.Settings` decide.

    Raises:
        ConfigError: the variable is unset or the Secret block cannot be loaded.
    """
    if ref is None:
        return None
    env = os.environ if environ is None else environ
    kind, sep, name = ref.partition(":")
    if sep and kind == "env":
        value = env.get(name)
        if not value:
            raise ConfigError(f"db={ref!r}: the environment variable {name} is unset or empty")
        return str(value)
    if sep and kind == "secret":
        from prefect.blocks.system import Secret

        try:
            return str(Secret.load(name).get())  # type: ignore[union-attr]
        except Exception as e:
            raise ConfigError(
                f"db={ref!r}: cannot load the Prefect Secret block {name!r} ({type(e).__name__}); "
                f"create it with `prefect block create secret` or pass env:INFGATE_DB_URL"
            ) from None
    return ref


# --- a blocked gate ends Failed, quietly --------------------------------------------------------

_ENGINE_RERAISE = "Engine execution exited with unexpected exception"
_blocked_runs: set[str] = set()
_blocked_lock = threading.Lock()


class _BlockedIsNotAnEngineError(logging.Filter):
    """Drops the engine's re-raise record of a flow run that ended blocked (see module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _ENGINE_RERAISE:
            return True
        run_id = str(getattr(record, "flow_run_id", ""))
        with _blocked_lock:
            if run_id not in _blocked_runs:
                return True
            _blocked_runs.discard(run_id)  # the engine re-raises once per run
            return False


_FILTER = _BlockedIsNotAnEngineError()


def _install_filter() -> None:
    logger = logging.getLogger("prefect.flow_runs")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


def mark_gate_blocked(flow_run_id: Any) -> None:
    """Record that ``flow_run_id`` ends Failed because the gate blocked (not an error)."""
    _install_filter()
    with _blocked_lock:
        _blocked_runs.add(str(flow_run_id))


# --- termination ------------------------------------------------------------------------------


def handle_termination(signals: Iterable[int] = (signal.SIGTERM, signal.SIGHUP)) -> None:
    """End this process through ``SystemExit(128 + signum)`` on ``signals``.

    Python's default SIGTERM action kills the process on the spot: no ``finally``, no
    ``atexit``, so the ephemeral Prefect API server started by this process keeps running
    and the flow run stays RUNNING. Call this once, from the main thread, before the first
    flow run (``infgate scan``, ``infgate hook serve``). While a flow runs in the main thread,
    Prefect's engine installs its own SIGTERM handler (the run ends Crashed) and restores
    this one after.

    Raises:
        RuntimeError: called from another thread than the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("handle_termination() must be called from the main thread")

    def _exit(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        log.warning("received %s: stopping", name)
        try:  # runs in worker threads (the hook's starter) never see the signal: end them here
            crash_orphaned_runs(this_process=f"received {name}")
        except Exception as e:
            log.warning("could not mark this process's flow runs crashed: %s", e)
        raise SystemExit(128 + signum)

    for sig in signals:
        signal.signal(sig, _exit)


def _pid_tag() -> str:
    return f"{PID_TAG}:{socket.gethostname()}:{os.getpid()}"


def tag_process(flow_run_id: Any) -> None:
    """Tag the flow run with this host and process id (for :func:`crash_orphaned_runs`)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        client.update_flow_run(flow_run_id, tags=[*run.tags, _pid_tag()])


def tag_this_run() -> None:
    """:func:`tag_process` for the flow run in progress; best effort (an unreachable API
    must not fail a scan for a bookkeeping tag: the run itself reports real API failures)."""
    from prefect.runtime import flow_run

    try:
        tag_process(flow_run.id)
    except Exception as e:
        log.warning("could not tag flow run %s with its process: %s", flow_run.id, e)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def crash_orphaned_runs(*, this_process: str | None = None) -> list[str]:
    """Mark Crashed every RUNNING infgate flow run of this host whose process is gone.

    Args:
        this_process: instead, mark the runs of *this* process, with this reason (a
            termination signal: the process is about to end).

    Returns:
        The ids of the runs marked.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    host = socket.gethostname()
    marked: list[str] = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
            )
        )
        for run in runs:
            for tag in run.tags:
                kind, _, rest = tag.partition(":")
                tag_host, _, pid = rest.rpartition(":")
                if kind != PID_TAG or tag_host != host or not pid.isdigit():
                    continue
                if this_process is not None:
                    if int(pid) != os.getpid():
                        continue
                    message = f"process {pid} on {host}: {this_process}"
                elif int(pid) == os.getpid() or _alive(int(pid)):
                    continue
                else:
                    message = f"process {pid} on {host} ended without finishing this run"
                client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                log.warning("flow run %s (%s): marked Crashed: %s", run.name, run.id, message)
                marked.append(str(run.id))
    return marked
