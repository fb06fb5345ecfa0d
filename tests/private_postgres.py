"""A PostgreSQL server of the tests' own, in a temporary directory, to stop and start at will.

The fault tests take the database away for a while; they must never do that to the shared server
on 5432. This runs Debian's PostgreSQL binaries (``initdb``, ``pg_ctl``) on a free port with its
socket in the same temporary directory. PostgreSQL refuses to run as root, so when the tests run
as root the server runs as the ``postgres`` user (``runuser``), in a directory it owns.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from storage.db import make_engine, upgrade

BIN = Path(os.environ.get("RAPPORT_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def available() -> str | None:
    """Why a private server cannot run here, or None when it can."""
    if not (BIN / "initdb").exists():
        return f"no PostgreSQL binaries in {BIN} (set RAPPORT_TEST_PG_BIN)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser"
    return None


class PrivatePostgres:
    """One throw-away server: :meth:`start`, :meth:`stop` (an outage), :meth:`close` (gone)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rapport-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        initdb = [str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"]
        self._run(*initdb, "--no-sync", "-E", "UTF8")
        self.start()

    @property
    def server_url(self) -> str:
        """The URL of the server's ``postgres`` database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        """A new, migrated database on this server; its URL."""
        name = f"rapport_{uuid.uuid4().hex[:10]}"
        admin = create_engine(self.server_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        return url

    def start(self) -> None:
        """Start the server and wait until it takes connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg_ctl = [str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log")]
        self._run(*pg_ctl, "-o", options + " -c max_connections=200", "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: connections are cut, as in an outage; ``immediate``: a crash)."""
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        """Whether the server answers on its port."""
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def close(self) -> None:
        """Stop the server if it runs and remove its directory."""
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        """What the server logged."""
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _run(self, *args: str) -> None:
        command = ["runuser", "-u", "postgres", "--", *args] if self._as_root else list(args)
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:1])} failed after {time.monotonic() - started:.1f} s: "
                f"{done.stdout}{done.stderr}{self.log()[-2000:]}"
            )
