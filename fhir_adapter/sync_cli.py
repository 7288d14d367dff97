"""``fhir-adapter sync``: run one sync with the trust FHIR server, for cron or a systemd timer.

Thin on purpose: read settings from the environment, build the store, client and job, print the summary,
exit with the contract's code.  Exit 0 in step, 1 finished with conflicts or rejections, 2 could not run
(settings missing, lease held, server unreachable or refusing us, database unavailable) with one line on
stderr.  Nothing secret (token, key, database password) and nothing clinical is ever printed, and no traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import click

from .config import DEFAULT_DATABASE_URL

log = logging.getLogger(__name__)

EXIT_IN_STEP, EXIT_CONFLICTS, EXIT_COULD_NOT_RUN = 0, 1, 2


class _CouldNotRun(Exception):
    """A one-line, secret-free reason to stop with exit 2."""


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise _CouldNotRun(f"{name} must be set")
    return value


def _int_setting(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise _CouldNotRun(f"{name} must be a whole number")
    return int(raw)


def _require_https(env: Mapping[str, str], name: str) -> None:
    """The CLI has no way to allow plain http off this machine: consent data and credentials would travel in clear."""
    from urllib.parse import urlsplit

    from .fhir_client import is_loopback_host

    parts = urlsplit(env.get(name, "").strip())
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise _CouldNotRun(f"{name} must use https (plain http is allowed only to this machine: localhost, 127.0.0.0/8, ::1)")


def build_client(env: Mapping[str, str]) -> Any:
    """The FHIR client from CASUS_FHIR_* settings; TLS verification stays on (CASUS_FHIR_CA_BUNDLE picks the CA file)."""
    from .fhir_auth import auth_from_env
    from .fhir_client import ConfigurationError, FhirClient

    base_url = _required(env, "CASUS_FHIR_BASE_URL")
    _require_https(env, "CASUS_FHIR_BASE_URL")
    if env.get("CASUS_FHIR_AUTH", "").strip().lower() == "smart":
        _require_https(env, "CASUS_FHIR_TOKEN_URL")
    ca_bundle = env.get("CASUS_FHIR_CA_BUNDLE", "").strip()
    if ca_bundle and not Path(ca_bundle).is_file():
        raise _CouldNotRun("CASUS_FHIR_CA_BUNDLE does not name a readable file")
    try:
        return FhirClient(base_url, auth=auth_from_env(env), verify=ca_bundle or True,
                          max_retries=_int_setting(env, "CASUS_FHIR_MAX_RETRIES", 5))
    except ConfigurationError as exc:  # messages name settings, never their values
        raise _CouldNotRun(f"FHIR server settings: {exc}") from exc


def open_store(env: Mapping[str, str]) -> Any:
    """The store named by CASUS_DATABASE_URL; failures are reported by type only (the URL may hold a password)."""
    from sqlalchemy.exc import SQLAlchemyError

    from .store import Store
    from .store.engine import StoreError

    try:
        return Store.open(env.get("CASUS_DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL)
    except (SQLAlchemyError, StoreError, OSError, ValueError) as exc:
        raise _CouldNotRun(f"cannot open the database named by CASUS_DATABASE_URL ({type(exc).__name__})") from exc


class ProgressLine:
    """A one-line progress display on a terminal: pushed and pulled counts, rewritten in place."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._counts = {"push": 0, "pull": 0}

    def __call__(self, stage: str, count: int) -> None:
        self._counts[stage] = self._counts.get(stage, 0) + count
        self._stream.write(f"\rsync: {self._counts['push']} forms checked for push, {self._counts['pull']} Consents read")
        self._stream.flush()

    def close(self) -> None:
        if any(self._counts.values()):
            self._stream.write("\n")
            self._stream.flush()


def progress_for(stream: IO[str]) -> ProgressLine | None:
    """A progress display only when ``stream`` is a terminal: cron and systemd logs stay quiet."""
    isatty: Callable[[], bool] | None = getattr(stream, "isatty", None)
    return ProgressLine(stream) if isatty is not None and isatty() else None


def _write_summary(document: dict[str, Any], summary_file: Path | None) -> None:
    text = json.dumps(document, indent=2, ensure_ascii=False)
    if summary_file is None:
        click.echo(text)
        return
    try:
        summary_file.parent.mkdir(parents=True, exist_ok=True)
        summary_file.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise _CouldNotRun(f"cannot write the summary file ({exc.strerror})") from exc


def run_sync(env: Mapping[str, str], *, push: bool, pull: bool, dry_run: bool, batch_size: int, page_size: int,
             lock_ttl: int, summary_file: Path | None, stderr: IO[str]) -> int:
    """Everything the command does, returning its exit code (separate from click so it reads top to bottom)."""
    from sqlalchemy.exc import SQLAlchemyError

    from .store.engine import StoreError
    from .sync import SyncAborted, SyncJob, SyncLocked

    client = build_client(env)
    try:
        store = open_store(env)
    except _CouldNotRun:
        client.close()
        raise
    progress = progress_for(stderr)
    try:
        job = SyncJob(store, client, batch_size=batch_size, page_size=page_size, lock_ttl_seconds=lock_ttl, progress=progress)
        summary = job.run(push=push, pull=pull, dry_run=dry_run)
    except SyncLocked as exc:
        raise _CouldNotRun(f"{exc}; try again later") from exc
    except SyncAborted as exc:
        kept = "nothing was written (dry run)" if dry_run else "progress so far is kept"
        raise _CouldNotRun(f"stopped part-way, {kept}: {exc}") from exc
    except (SQLAlchemyError, StoreError) as exc:
        raise _CouldNotRun(f"database error ({type(exc).__name__})") from exc
    finally:
        if progress is not None:
            progress.close()
        client.close()
        store.close()
    _write_summary(summary.to_json(), summary_file)
    return summary.exit_code()


@click.command("sync", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--push-only", is_flag=True, help="Only push local changes to the FHIR server.")
@click.option("--pull-only", is_flag=True, help="Only pull changes from the FHIR server.")
@click.option("--dry-run", is_flag=True, help="Report what would be pushed, pulled or in conflict; write nothing anywhere.")
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(1, 1000), help="Forms per transaction Bundle.")
@click.option("--page-size", default=100, show_default=True, type=click.IntRange(1, 1000), help="Consents per search page when pulling.")
@click.option("--lock-ttl", default=900, show_default=True, type=click.IntRange(1, 86400),
              help="Seconds the run's lease lasts without renewal (a killed run blocks others this long at most).")
@click.option("--summary-file", type=click.Path(path_type=Path, dir_okay=False), help="Write the JSON summary here instead of stdout.")
def sync_command(push_only: bool, pull_only: bool, dry_run: bool, batch_size: int, page_size: int, lock_ttl: int,
                 summary_file: Path | None) -> None:
    """Push local consent form changes to the trust FHIR server and pull its changes back.

    Settings: CASUS_FHIR_BASE_URL (required), CASUS_FHIR_AUTH and its credentials, CASUS_FHIR_CA_BUNDLE,
    CASUS_DATABASE_URL. Prints a JSON summary. Exit 0 in step, 1 conflicts or rejections, 2 could not run.
    """
    stderr = sys.stderr  # the real stream (CliRunner swaps it), so isatty() tells a terminal from a pipe
    if not logging.getLogger().handlers:  # errors only unless asked (CASUS_LOG_LEVEL): cron mails whatever reaches stderr
        level = os.environ.get("CASUS_LOG_LEVEL", "ERROR").strip().upper()
        logging.basicConfig(level=level if level in logging.getLevelNamesMapping() else "ERROR", stream=stderr,
                            format="%(levelname)s %(name)s: %(message)s")
    if push_only and pull_only:
        click.echo("sync: could not run: --push-only and --pull-only exclude each other", err=True)
        sys.exit(EXIT_COULD_NOT_RUN)
    try:
        code = run_sync(os.environ, push=not pull_only, pull=not push_only, dry_run=dry_run, batch_size=batch_size,
                        page_size=page_size, lock_ttl=lock_ttl, summary_file=summary_file, stderr=stderr)
    except _CouldNotRun as exc:
        log.info("sync could not run: %s", exc)
        click.echo(f"sync: could not run: {exc}", err=True)
        sys.exit(EXIT_COULD_NOT_RUN)
    except Exception as exc:  # the contract is one line and exit 2, never a traceback (which could echo data)
        log.debug("sync failed unexpectedly", exc_info=True)
        click.echo(f"sync: could not run: unexpected {type(exc).__name__}", err=True)
        sys.exit(EXIT_COULD_NOT_RUN)
    sys.exit(code)
