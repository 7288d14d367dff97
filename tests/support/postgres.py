"""A real PostgreSQL for the test suite (pytest plugin, registered in tests/conftest.py).

The store promises one code path for SQLite and PostgreSQL; only a real server
shows that the locking and upserts behave the same.  So the suite starts its own
throw-away cluster on loopback, or uses the one named by CASUS_TEST_POSTGRES_URL
(which must allow CREATE DATABASE).

Fixtures:

* ``postgres_url`` (session): a SQLAlchemy URL of a database on the server.
* ``postgres_database_url`` (function): a new empty database for one test, dropped afterwards,
  so tests never see each other's rows.

Without server binaries the PostgreSQL tests are skipped with the reason, except
on CI (CI=true), where they fail: CI must exercise PostgreSQL.
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
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

ENV_URL = "CASUS_TEST_POSTGRES_URL"
SERVER_USER = "postgres"  # the system account the cluster runs as when the tests run as root
DATABASE = "casus_test"
START_ATTEMPTS = 3  # a free port can be taken between choosing it and the server binding it
TIMEOUT_SECONDS = 60


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _unavailable(reason: str) -> NoReturn:
    if _on_ci():
        pytest.fail(f"PostgreSQL is required on CI but {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason} (install postgresql or set {ENV_URL})")


def find_server_bin() -> Path | None:
    """The directory holding initdb and pg_ctl: the newest /usr/lib/postgresql/*/bin, else whatever is on PATH."""

    def major(path: str) -> int:
        name = Path(path).parent.parent.name
        return int(name) if name.isdigit() else 0

    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=major, reverse=True):
        if os.access(Path(initdb).with_name("pg_ctl"), os.X_OK):
            return Path(initdb).parent
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_account() -> pwd.struct_passwd | None:
    """None when the tests already run as an ordinary user; otherwise the account PostgreSQL will run as.

    PostgreSQL refuses to run as root, so as root we use (or create) the ``postgres`` system user.
    """
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
            check=True,
            capture_output=True,
            timeout=TIMEOUT_SECONDS,
        )
        return pwd.getpwnam(SERVER_USER)


class LocalCluster:
    """A throw-away cluster in a temp dir: trust auth, loopback only, fsync off (the data is disposable)."""

    def __init__(self, bin_dir: Path, account: pwd.struct_passwd | None) -> None:
        self.bin_dir = bin_dir
        self.account = account
        self.root = Path(tempfile.mkdtemp(prefix="casus-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        if account is not None:
            os.chown(self.root, account.pw_uid, account.pw_gid)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.account is not None:
            command = ["runuser", "-u", self.account.pw_name, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, cwd=self.root)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no server log)"

    def init(self) -> None:
        done = self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--no-locale")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        failure = ""
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", str(TIMEOUT_SECONDS), "start")
            if done.returncode == 0:
                return
            failure = f"{done.stdout}\n{done.stderr}\n{self._log_tail()}"
        raise RuntimeError(f"PostgreSQL did not start after {START_ATTEMPTS} attempts:\n{failure}")

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(TIMEOUT_SECONDS), "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


def _with_psycopg(url: str) -> str:
    """The URL with the psycopg 3 driver (a bare postgresql:// would make SQLAlchemy look for psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _execute_autocommit(url: str, *statements: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database on a real PostgreSQL server, for the whole session."""
    configured = os.environ.get(ENV_URL)
    if configured:
        yield _with_psycopg(configured)
        return
    bin_dir = find_server_bin()
    if bin_dir is None:
        _unavailable("no server binaries (initdb, pg_ctl) were found under /usr/lib/postgresql/*/bin or on PATH")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        _unavailable("running as root and runuser is missing, so the server cannot be started as a non-root user")
    cluster = LocalCluster(bin_dir, _server_account())
    try:
        cluster.init()
        cluster.start()
        _execute_autocommit(cluster.url("postgres"), f"CREATE DATABASE {DATABASE}")
        yield cluster.url(DATABASE)
    finally:
        cluster.stop()


@pytest.fixture
def postgres_database_url(postgres_url: str) -> Iterator[str]:
    """A brand-new empty database for one test; dropped (even if still connected) when the test ends."""
    name = f"casus_t_{uuid.uuid4().hex[:16]}"
    admin = make_url(postgres_url)
    admin_url = admin.render_as_string(hide_password=False)
    _execute_autocommit(admin_url, f"CREATE DATABASE {name}")
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        _execute_autocommit(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
