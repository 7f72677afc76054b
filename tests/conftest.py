"""Test isolation: every test gets its own MLflow store, Prefect home, DVC-free cache and download
cache under tmp_path; end-to-end tests work in a temporary git copy of the repository."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.servers import MlflowServer, Postgres, ServerUnavailable, mlflow_server, postgres_cluster, require_postgres

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path_factory.mktemp("env"))
    yield
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    # The client's tracking and registry URIs are process-wide: a test that set them (to its own store)
    # must not leave the next test reading another store's registry.
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def isolate(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """The environment every test runs in: no MLflow/Prefect/DVC settings from outside, its own Prefect
    home and download cache under `home`. Module-scoped fixtures (set up before the per-test fixture) use it
    through `pytest.MonkeyPatch.context()`."""
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "PREFECT_", "DVC_"))]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    monkeypatch.setenv("PREFECT_HOME", str(home / "prefect"))
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    monkeypatch.setenv("D2LFLOW_CACHE", str(home / "cache"))
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.email=ci@d2lflow", "-c", "user.name=d2lflow-ci", *args], cwd=root,
                          check=True, capture_output=True, text=True).stdout


def copy_repo(target: Path, overrides: list[str] | None = None) -> Path:
    """The repository's tracked and unignored files (no data, artifacts or stores) as a fresh git
    repository with one clean commit, after applying params overrides."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file() and not name.startswith(("tests/", "benchmarks/")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    if overrides:
        from tasks.params import set_params

        set_params(target / "params.yaml", overrides)
    git(target, "init", "-q", "-b", "main")
    git(target, "add", "-A")
    git(target, "commit", "-q", "-m", "copy of the repository under test")
    return target


def run(root: Path, *command: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command in `root`; on failure the assertion shows its output."""
    done = subprocess.run(list(command), cwd=root, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


class Snapshot:
    """A directory saved once (say, a repository copy after an expensive `dvc repro`) and put back, at
    the same absolute path, for each test that uses it, so every such test starts from identical files
    without reproducing them. The same path because a SQLite MLflow store records absolute artifact
    locations: a copy elsewhere would read and write the original's artifacts. SQLite files (`*.db`) are
    put back into the existing file through SQLite's backup API, not replaced: MLflow keeps one engine per
    store URI in this process, whose open connection would go on reading a deleted file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.saved = root.with_name(f"{root.name}.saved")
        shutil.copytree(root, self.saved, symlinks=True)
        self.databases = sorted(path.relative_to(self.saved) for path in self.saved.rglob("*.db") if path.is_file())

    def restore(self) -> Path:
        kept = {self.root / name for name in self.databases if (self.root / name).is_file()}
        _remove_all_but(self.root, kept)
        shutil.copytree(self.saved, self.root, symlinks=True, dirs_exist_ok=True,
                        ignore=lambda folder, names: [n for n in names if Path(folder, n) in
                                                      {self.saved / k.relative_to(self.root) for k in kept}])
        for target in kept:
            source = sqlite3.connect(self.saved / target.relative_to(self.root))
            destination = sqlite3.connect(target)
            try:
                source.backup(destination)
            finally:
                source.close()
                destination.close()
        return self.root


def _remove_all_but(folder: Path, kept: set[Path]) -> None:
    """Delete everything under `folder` except the files in `kept` (and the folders holding them)."""
    for entry in folder.iterdir():
        if entry in kept:
            continue
        if entry.is_dir() and not entry.is_symlink():
            if any(path.is_relative_to(entry) for path in kept):
                _remove_all_but(entry, kept)
            else:
                shutil.rmtree(entry)
        else:
            entry.unlink()


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    return copy_repo(tmp_path / "repo")


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """A tiny git + DVC repository (no pipeline): params.yaml with only defaults, one file to `dvc add`."""
    root = tmp_path / "dvc-repo"
    root.mkdir()
    git(root, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    (root / "params.yaml").write_text("seed: 0\n")
    (root / "numbers.txt").write_text("1 2 3\n")
    return root


# ----------------------------------------------------------------------------- local HTTP server

class _RangeHandler(SimpleHTTPRequestHandler):
    """Serves files, honours ``Range: bytes=N-`` and can cut one response after N bytes."""

    def log_message(self, format: str, *args: object) -> None:  # silence the server
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))  # type: ignore[attr-defined]
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = srv.cut_after  # type: ignore[attr-defined]
        if cut is not None:
            srv.cut_after = None  # type: ignore[attr-defined]
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Yield (base_url, served_dir, httpd); httpd.requests logs (path, Range) per GET."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    root = tmp_path / "served"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_RangeHandler, directory=str(root)))
    httpd.requests = []  # type: ignore[attr-defined]
    httpd.cut_after = None  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


# ----------------------------------------------------------------------------- tracking server

@pytest.fixture
def postgres_tracking_server(tmp_path: Path) -> Iterator[tuple[Postgres, MlflowServer]]:
    """A throwaway PostgreSQL cluster and an `mlflow server` using it as backend store, with its
    own artifact root. Without PostgreSQL the test is skipped, except under CI=true where it fails."""
    try:
        require_postgres()
    except ServerUnavailable as error:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the PostgreSQL tests: {error}")
        pytest.skip(str(error))
    with postgres_cluster() as postgres, mlflow_server(postgres.uri, tmp_path / "mlflow-server") as server:
        yield postgres, server
