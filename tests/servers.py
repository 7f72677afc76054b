"""Throwaway servers for integration tests: a PostgreSQL cluster and an MLflow tracking server on
127.0.0.1, free ports, everything under temporary directories, stopped on exit.

PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user the Debian
package creates (in a directory that user owns); as any other user it runs as that user.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
STARTUP_TIMEOUT = 180.0  # seconds; a shared 2-core machine can be slow to start either server
PG_USER = "postgres"


class ServerUnavailable(RuntimeError):
    """A server's binaries are not installed (the caller decides between skip and fail)."""


@dataclass(frozen=True)
class Postgres:
    bindir: Path
    port: int
    user: str
    database: str

    @property
    def uri(self) -> str:
        """SQLAlchemy URI (psycopg2 driver), as `mlflow server --backend-store-uri` takes it."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def query(self, sql: str, *args: object) -> list[tuple]:
        """Rows of one query, read straight from PostgreSQL (not through MLflow)."""
        import psycopg2

        with psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname=self.database) as conn:
            with conn.cursor() as cursor:
                cursor.execute(sql, args)
                return cursor.fetchall()


@dataclass(frozen=True)
class MlflowServer:
    url: str
    artifacts: Path
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bindir() -> Path:
    """The directory of initdb/pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin
    (newest version first); ServerUnavailable when PostgreSQL is not installed."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)], reverse=True)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "createdb")):
            return bindir
    raise ServerUnavailable("PostgreSQL is not installed (no initdb/pg_ctl/createdb on PATH or under "
                            "/usr/lib/postgresql/*/bin); install it: apt-get install -y postgresql")


def _as_cluster_owner() -> list[str]:
    """Prefix that runs a command as the cluster's owner: `postgres` when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam(PG_USER)
    except KeyError:
        raise ServerUnavailable(f"running as root but there is no '{PG_USER}' user to own the cluster; "
                                "the Debian package postgresql creates it") from None
    return ["runuser", "-u", PG_USER, "--"]


def require_postgres() -> None:
    """ServerUnavailable unless a cluster can be started here (binaries, and an owner when root)."""
    postgres_bindir()
    _as_cluster_owner()


def _check(command: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=STARTUP_TIMEOUT)
    if done.returncode != 0:
        server_log = log.read_text(errors="replace")[-4000:] if log is not None and log.is_file() else ""
        raise RuntimeError(f"{what} failed ({done.returncode}): {' '.join(command)}\n"
                           f"{done.stdout}\n{done.stderr}\n{server_log}")


@contextmanager
def postgres_cluster(database: str = "mlflow") -> Iterator[Postgres]:
    """initdb in a temporary directory, `pg_ctl start` on 127.0.0.1:<free port> (unix socket in that
    directory, no fsync), create `database`; `pg_ctl stop` and remove everything on exit."""
    bindir = postgres_bindir()
    owner = _as_cluster_owner()
    base = Path(tempfile.mkdtemp(prefix="d2lflow-pg-"))
    if owner:
        shutil.chown(base, user=PG_USER)
    data, log, sockets = base / "data", base / "postgres.log", base / "sockets"
    try:
        sockets.mkdir()
        if owner:
            shutil.chown(sockets, user=PG_USER)
        _check([*owner, str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "-A", "trust", "-E", "UTF8",
                "--no-sync"], "initdb")
        port = free_port()
        with (data / "postgresql.conf").open("a") as conf:  # settings here, not in pg_ctl's shell string
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{sockets}'\n"
                       "fsync = off\n")
        _check([*owner, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                "-t", str(int(STARTUP_TIMEOUT)), "start"], "pg_ctl start", log)
        try:
            _check([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, database],
                   "createdb", log)
            yield Postgres(bindir=bindir, port=port, user=PG_USER, database=database)
        finally:
            subprocess.run([*owner, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"],
                           capture_output=True, timeout=90)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def stop_group(process: subprocess.Popen | None, timeout: float = 30) -> None:
    """SIGTERM to the process group (the server's workers, serve's flow-run processes and their DVC
    stages), SIGKILL after `timeout`; then nothing of the group is left."""
    if process is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # children of the group may outlive its leader briefly
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    process.wait(timeout=timeout)


def wait_for_health(url: str, process: subprocess.Popen, log: Path, timeout: float = STARTUP_TIMEOUT) -> None:
    """Poll `url` until it answers 200, the process dies, or `timeout` s pass (then the log is shown)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}) before {url} answered:\n"
                               f"{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text(errors='replace')[-4000:]}")


@contextmanager
def mlflow_server(backend_store_uri: str, workdir: Path) -> Iterator[MlflowServer]:
    """`mlflow server` on 127.0.0.1:<free port> with its own artifact root (`workdir/artifacts`,
    served through the server as mlflow-artifacts:/), one worker; stopped on exit."""
    artifacts, log = workdir / "artifacts", workdir / "mlflow-server.log"
    artifacts.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_store_uri,
               "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    # No job runner: its seven consumer processes serve GenAI jobs this project never submits.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_health(f"{url}/health", process, log)
        yield MlflowServer(url=url, artifacts=artifacts, log=log)
    finally:
        stop_group(process)
