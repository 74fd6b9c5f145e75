"""A real PostgreSQL 15 cluster for tests, on a free loopback port, with a fresh
database per test.

PostgreSQL comes from Debian's `postgresql` package (binaries in
/usr/lib/postgresql/15/bin); `ensure_postgresql()` installs it when it is missing
(the test machines run as root, as CI does). `initdb` refuses to run as root, so
as root the cluster belongs to Debian's `postgres` user: its folder is a temporary
one that user owns (pytest's own temporary folders are private to root), and
initdb and pg_ctl run through `runuser -u postgres --`. Run as anyone else, they run
as that user. Authentication is `trust` on 127.0.0.1 only: a test cluster, never a
real one.

The cluster can be stopped and started again on the same port (the outage tests
of `edge hq`), or restarted in one step (`restart()`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from broker import free_port, wait_for_port

PG_VERSION = 15
PG_BIN = Path(f"/usr/lib/postgresql/{PG_VERSION}/bin")
PG_USER = "postgres"  # Debian's system user, and the cluster's superuser


def _missing(message: str) -> None:
    """Fail in CI (CI=true: everything a test needs must be there), skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: PostgreSQL must be present)")
    pytest.skip(message)


def ensure_postgresql() -> None:
    if (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _missing(
            f"PostgreSQL {PG_VERSION} is not installed ({PG_BIN} is missing) and cannot be "
            "installed here: run 'apt-get install postgresql' as root"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
            check=True,
            env=env,
            capture_output=True,
        )
    except subprocess.CalledProcessError as e:
        _missing(f"apt-get install postgresql failed: {e.stderr.decode(errors='replace')[-500:]}")
    if not (PG_BIN / "initdb").exists():
        _missing(f"apt-get installed postgresql, but {PG_BIN / 'initdb'} is missing")


class Postgres:
    """One PostgreSQL cluster in a temporary folder of its own, on a free loopback port."""

    def __init__(self, *, port: int | None = None):
        ensure_postgresql()
        self.port = port or free_port()
        self.as_root = os.geteuid() == 0
        # Short, under /tmp (world-traversable): the postgres user must reach it, and
        # the unix socket's path is limited in length.
        self.folder = Path(tempfile.mkdtemp(prefix="edge-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        if self.as_root:
            user = pwd.getpwnam(PG_USER)
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self.folder.chmod(0o700)
        self._run(
            PG_BIN / "initdb",
            "-D",
            self.data,
            "-U",
            PG_USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",  # a test cluster: nothing to keep across a machine crash
        )
        # Loopback TCP on our port only; the unix socket in our folder (not
        # /var/run/postgresql, which may not exist or belong to a system cluster).
        # fsync off: a killed server still leaves its writes in the page cache, so the
        # restart tests see what a real server would; only a machine crash differs.
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# tests/postgres.py\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.folder}'\n"
                "fsync = off\n"
                "full_page_writes = off\n"
                "max_connections = 100\n"
                "log_min_messages = warning\n"
            )
        if self.as_root:
            # Written as root: the server (as postgres) must read it.
            user = pwd.getpwnam(PG_USER)
            os.chown(self.data / "postgresql.conf", user.pw_uid, user.pw_gid)

    def _run(self, *args) -> subprocess.CompletedProcess:
        command = [str(a) for a in args]
        if self.as_root:
            command = ["runuser", "-u", PG_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.folder)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}): "
                f"{result.stdout[-1000:]}{result.stderr[-1000:]}\n{self._log_tail()}"
            )
        return result

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def start(self) -> Postgres:
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")
        wait_for_port(self.port)
        self._start_reaper()
        return self

    def _start_reaper(self) -> None:
        """A watcher that stops the cluster and removes its folder once this process
        is gone: a pytest killed by a timeout runs no fixture finalizer, and the
        server (a daemon of its own, not our child) would otherwise run on."""
        if getattr(self, "_reaper", None) is not None and self._reaper.poll() is None:
            return
        as_user = f"runuser -u {PG_USER} -- " if self.as_root else ""
        script = (
            f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; "
            f"{as_user}{PG_BIN / 'pg_ctl'} -D {self.data} -m immediate -w stop; "
            f"rm -rf {self.folder}"
        )
        self._reaper = subprocess.Popen(
            ["sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not killed with our process group
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" (clients disconnected, a clean shutdown) or
        "immediate" (no shutdown checkpoint, recovery at the next start: as a crash)."""
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast", down_seconds: float = 0.0) -> None:
        """Stop and start again on the same port, `down_seconds` apart: every client's
        connection breaks and must be opened again."""
        self.stop(mode)
        time.sleep(down_seconds)
        self.start()

    def running(self) -> bool:
        command = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"]
        if self.as_root:
            command = ["runuser", "-u", PG_USER, "--", *command]
        return subprocess.run(command, capture_output=True).returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """One statement through psql (no Python driver needed): its unaligned output."""
        result = self._run(
            PG_BIN / "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            self.url(database),
            "-c",
            sql,
        )
        return result.stdout.strip()

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database: its URL."""
        name = name or f"test_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        reaper = getattr(self, "_reaper", None)
        if reaper is not None:
            reaper.kill()
            reaper.wait()
        if self.data.exists() and self.running():
            try:
                self.stop("immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
