"""A real FHIR R4 server (sekmet-fhir, pinned) started by the test suite on loopback.

Nothing is needed by hand on a fresh machine: the first use installs ``sekmet-fhir`` into its own
virtualenv (``$CASUS_SEKMET_VENV`` or ``<repo>/.cache/sekmet-venv``), guarded by a file lock so
test runs in parallel do not install twice.  Each server gets a free port on 127.0.0.1, a fresh data
directory and the built-in simulator switched off; it is stopped by the fixture that started it.

Fixtures:

* ``fhir_server`` (session): one shared server.  Tests isolate their data by giving every
  resource a unique business identifier (a fresh uuid formId) and searching by it.
* ``fresh_fhir_server`` (function): a server of its own with an empty store, for tests that count
  everything on the server (paging over exactly N resources).  Start-up is under a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.processes import stop_process

try:
    import fcntl  # POSIX: the install lock below; elsewhere parallel sessions are not guarded
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

SEKMET_REQUIREMENT = "sekmet-fhir==0.1.1"
SEKMET_VERSION = "0.1.1"
REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60.0
INSTALL_TIMEOUT_S = 900.0


def sekmet_venv() -> Path:
    return Path(os.environ.get("CASUS_SEKMET_VENV") or REPO / ".cache" / "sekmet-venv")


def _installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('sekmet-fhir'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_sekmet(venv: Path) -> Path:
    """Path of the ``sekmet`` executable, creating the virtualenv and installing the pinned version if needed."""
    python, executable = venv / "bin" / "python", venv / "bin" / "sekmet"
    if _installed_version(python) == SEKMET_VERSION and executable.exists():
        return executable
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be installing: wait for it, then re-check
        if _installed_version(python) != SEKMET_VERSION or not executable.exists():
            steps = [[sys.executable, "-m", "venv", str(venv)], [str(python), "-m", "pip", "install", "--quiet", SEKMET_REQUIREMENT]]
            for step in steps:
                done = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
                if done.returncode != 0:
                    pytest.fail(f"installing {SEKMET_REQUIREMENT} failed ({step[2]}):\n{(done.stdout + done.stderr)[-3000:]}")
    return executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_text(port: int, data_dir: Path) -> str:
    """The sekmet YAML config (JSON-quoted scalars are valid YAML, so paths with spaces survive)."""
    base_url = f"http://127.0.0.1:{port}/fhir"
    return (
        f"base_url: {json.dumps(base_url)}\n"
        "host: 127.0.0.1\n"
        f"port: {port}\n"
        f"data_dir: {json.dumps(str(data_dir))}\n"
        "simulator: {enabled: false}\n"
        "log_inbound: false\n"
    )


class SekmetServer:
    """One sekmet process; ``start``/``stop``/``restart`` keep the port and data directory."""

    def __init__(self, executable: Path, workdir: Path) -> None:
        self.executable = executable
        self.workdir = workdir
        self.port = free_port()
        self.data_dir = workdir / "data"
        self.config_file = workdir / "sekmet.yaml"
        self.log_file = workdir / "sekmet.log"
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(config_text(self.port, self.data_dir))
        with open(self.log_file, "ab") as log:
            self._process = subprocess.Popen(
                [str(self.executable), "serve", "--config", str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                self.stop()
                pytest.fail(f"sekmet exited with {self._process.returncode} before serving:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.base_url}/metadata", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"sekmet did not answer {self.base_url}/metadata within {STARTUP_TIMEOUT_S:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process)

    def restart(self) -> None:
        """Stop and start again on the same port and data (sekmet persists data across restarts)."""
        self.stop()
        self.start()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def running_sekmet(workdir: Path) -> Iterator[SekmetServer]:
    server = SekmetServer(ensure_sekmet(sekmet_venv()), workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SekmetServer]:
    """A shared sekmet FHIR server for the whole session (isolate data with unique identifiers)."""
    with running_sekmet(tmp_path_factory.mktemp("sekmet")) as server:
        yield server


@pytest.fixture
def fresh_fhir_server(tmp_path: Path) -> Iterator[SekmetServer]:
    """A sekmet FHIR server with an empty store, for this test alone."""
    with running_sekmet(tmp_path / "sekmet") as server:
        yield server
