"""A throwaway PostgreSQL server for tests: initdb in a temp dir, on a free 127.0.0.1 port, with
its unix socket in that dir; stopped and removed at the end.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` OS user (the apt
package creates it) in a temp dir that user owns. Binaries come from the Debian layout
(/usr/lib/postgresql/<major>/bin) or PATH; `make test` installs them (apt package `postgresql`).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

SERVER_USER = "postgres"  # the OS user the server runs as when we are root
SUPERUSER = "postgres"  # the database superuser initdb creates
START_TIMEOUT_S = 30


class PostgresUnavailable(RuntimeError):
    pass


def find_bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for bindir in candidates:
        if Path(bindir, "initdb").exists() and Path(bindir, "pg_ctl").exists():
            return Path(bindir)
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or PATH: "
        "`make test` installs them via apt (package postgresql)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """`start()`, then `dsn(database)` / `create_database()`; `stop()` removes everything."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                self._user = pwd.getpwnam(SERVER_USER)
            except KeyError as e:
                raise PostgresUnavailable(
                    f"running as root and there is no '{SERVER_USER}' OS user to run PostgreSQL as: "
                    "`make test` installs the postgresql apt package, which creates it"
                ) from e
        self.root = Path(tempfile.mkdtemp(prefix="chorus-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._started = False

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT_S * 2)
        if result.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise PostgresUnavailable(f"{' '.join(args[:1])} failed ({result.returncode}): {result.stderr}\n{tail}")
        return result

    def start(self) -> PostgresServer:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        if self.as_root:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-sync")
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            # a test server: durability is not the point, speed is
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w",
                  "-t", str(START_TIMEOUT_S), "start")
        self._started = True

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; its DSN."""
        name = "t_" + uuid.uuid4().hex[:16]
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)
        return self.dsn(name)

    def stop(self) -> None:
        try:
            if self._started:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            self._started = False
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(name="config", params=["sqlite", "postgresql"])
def store_config(request, tmp_path, monkeypatch):
    """A store test's `config`: a SQLite file in the test's folder, then the session's PostgreSQL."""
    from serve.store import StoreConfig
    from serve.store.config import DSN_ENV

    monkeypatch.delenv(DSN_ENV, raising=False)
    if request.param == "sqlite":
        return StoreConfig(data_dir=str(tmp_path / "data"))
    return StoreConfig(dsn=request.getfixturevalue("postgres_dsn"))
