"""No orphaned Prefect server after SIGTERM, and no flow run left RUNNING after a kill.

Each test starts a real process that runs a flow on Prefect's *ephemeral* API (a ``uvicorn``
child process it starts itself, with its own SQLite database), in a worker thread as the
review hook's starter does, then signals it:

* SIGTERM with :func:`infgate.flows.runtime.handle_termination` installed: the process exits,
  its API server child is gone, and the flow run is Crashed (Python's default SIGTERM action
  leaves both behind: the server child keeps running and the run stays RUNNING);
* ``kill -9`` (nothing can run): the run stays RUNNING until the next start calls
  :func:`~infgate.flows.runtime.crash_orphaned_runs`, which marks it Crashed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

SCRIPT = """
import sys, threading, time
from infgate.flows.runtime import handle_termination, tag_process
from prefect import flow
from prefect.runtime import flow_run
from prefect.server.api.server import SubprocessASGIServer

@flow(name="infgate-sleeper")
def sleeper():
    tag_process(flow_run.id)
    print("RUNNING", flow_run.id, SubprocessASGIServer().api_url, flush=True)
    time.sleep(600)

if sys.argv[1] == "handled":
    handle_termination()
worker = threading.Thread(target=sleeper, daemon=True)
worker.start()
worker.join()
"""
START_TIMEOUT = 240.0


@dataclass
class Running:
    proc: subprocess.Popen[str]
    db: Path
    flow_run_id: str
    api_url: str
    children: list[psutil.Process]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    started: list[Running] = []

    def _start(mode: str) -> Running:
        db = tmp_path / f"prefect-{mode}.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
        env.update(
            {
                "PREFECT_HOME": str(tmp_path / f"home-{mode}"),
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{db}",
                "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
                "PREFECT_LOGGING_LEVEL": "WARNING",
            }
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, mode],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        assert proc.stdout is not None
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("RUNNING") or (not line and proc.poll() is not None):
                break
        assert line.startswith("RUNNING"), f"the flow did not start: {line!r}"
        _, run_id, api_url = line.split()
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "no ephemeral API server child process"
        running = Running(proc, db, run_id, api_url, children)
        started.append(running)
        return running

    yield _start
    for r in started:  # whatever a test left behind (kill -9 leaves the server by design)
        leftovers = list(r.children)
        if r.proc.poll() is None:
            leftovers.append(psutil.Process(r.proc.pid))
        for p in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        r.proc.wait(timeout=30)


def _state(db: Path, flow_run_id: str) -> str:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, state_type FROM flow_run").fetchall()
    states = {str(i).replace("-", ""): s for i, s in rows}
    return str(states[flow_run_id.replace("-", "")])


def _gone(processes: list[psutil.Process], timeout: float = 20.0) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return not alive


@pytest.mark.slow
def test_sigterm_stops_the_ephemeral_server_and_crashes_the_run(start: object) -> None:
    running = start("handled")  # type: ignore[operator]
    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert _gone(running.children), [p.pid for p in running.children if p.is_running()]
    assert _state(running.db, running.flow_run_id) == "CRASHED"


@pytest.mark.slow
def test_after_kill_9_the_next_start_marks_the_run_crashed(start: object) -> None:
    from infgate.flows.runtime import crash_orphaned_runs
    from prefect.settings import PREFECT_API_URL, temporary_settings

    running = start("handled")  # type: ignore[operator]
    running.proc.kill()
    running.proc.wait(timeout=30)
    assert _state(running.db, running.flow_run_id) == "RUNNING"  # nothing ran at exit
    # the next start talks to the same database (here: the orphaned server, still up)
    with temporary_settings({PREFECT_API_URL: running.api_url}):
        assert crash_orphaned_runs() == [running.flow_run_id]
        assert crash_orphaned_runs() == []
    assert _state(running.db, running.flow_run_id) == "CRASHED"
