"""A throwaway PostgreSQL server for the suite when ``INFGATE_TEST_PG_URL`` is unset.

It runs the server binaries of the ``pgserver`` wheel (PostgreSQL 16, no system packages)
in a session tmp dir: TCP on 127.0.0.1 at a free port with password (scram-sha-256) auth, so
the tests see what a real deployment sees (a wrong password is refused). PostgreSQL refuses
to run as root: under root the server runs as the unprivileged ``pgserver`` user (created by
the wheel's own helper, ``useradd``), as ``infra/start-postgres.sh`` does with ``su postgres``.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ROLE, DATABASE = "infgate", "infgate_test"


@dataclass(frozen=True)
class ThrowawayPostgres:
    """A running server; ``url`` reaches the test database as the password-protected role."""

    url: str
    pgdata: Path
    port: int
    bin_dir: Path
    user: str | None = None
    password: str = field(default="", repr=False)

    def stop(self) -> None:
        """Fast shutdown (open connections are closed by the server)."""
        _run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
            self.user,
            check=False,
        )


def _run(cmd: list[str], user: str | None, *, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, user=user, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def start_throwaway_postgres(root: Path, port: int) -> ThrowawayPostgres:
    """initdb + start a server under ``root`` listening on 127.0.0.1:``port``.

    Raises:
        RuntimeError: naming the step that failed, with the server's own message.
    """
    import pgserver

    bin_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
    pgdata = root / "pgdata"
    pgdata.mkdir()
    password = secrets.token_urlsafe(18)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    user: str | None = None
    if os.geteuid() == 0:
        from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

        user = "pgserver"
        entry = ensure_user_exists(user)
        assert entry is not None
        ensure_prefix_permissions(pgdata)
        for path in (pgdata, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    _run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(pgdata),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        user,
    )
    pwfile.unlink()
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={pgdata} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    _run(
        [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(pgdata),
            "-l",
            str(pgdata / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "90",
            "start",
        ],
        user,
    )
    server = ThrowawayPostgres(
        url=f"postgresql+psycopg2://{ROLE}:{password}@127.0.0.1:{port}/{DATABASE}",
        pgdata=pgdata,
        port=port,
        bin_dir=bin_dir,
        user=user,
        password=password,
    )
    try:
        psql = [str(bin_dir / "psql"), "-h", str(pgdata), "-p", str(port), "-U", "postgres"]
        create = f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{password}'"
        _run([*psql, "-v", "ON_ERROR_STOP=1", "-qc", create], user)
        _run([*psql, "-qc", f"CREATE DATABASE {DATABASE} OWNER {ROLE}"], user)
    except BaseException:
        server.stop()
        raise
    log.info("throwaway PostgreSQL on 127.0.0.1:%d (%s)", port, pgdata)
    return server


def remove(server: ThrowawayPostgres) -> None:
    """Stop the server and delete its data directory."""
    server.stop()
    shutil.rmtree(server.pgdata, ignore_errors=True)
