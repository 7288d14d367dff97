"""``fhir-adapter sync``: run one sync with the trust FHIR server, for cron or a systemd timer; and its operator commands.

Thin on purpose: read settings from the environment, build the store, client and job, print the summary,
exit with the contract's code: 0 in step, 1 finished with problems to report (conflicts, rejections, Consents
deleted on the server), 2 failed (settings missing, server unreachable or refusing us, database unavailable),
75 skipped because another run holds the lease.  The JSON summary is printed (or written atomically to
``--summary-file``) on every outcome, failures included, with one line on stderr when the run did not finish.
Nothing secret (token, key, database password) and nothing clinical is ever printed, and no traceback.

``sync status`` shows the last run, forms waiting, the lease and outstanding problems; ``sync resolve`` makes
one form agree on both sides, keeping the local or the server version (audited, version-checked on both
sides); ``sync unlock`` clears the lease (audited).
"""

from __future__ import annotations

import contextlib
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

EXIT_IN_STEP, EXIT_PROBLEMS, EXIT_FAILED, EXIT_SKIPPED = 0, 1, 2, 75
OPERATOR_ACTOR = "operator"


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
        return FhirClient(base_url, auth=auth_from_env(env), verify=ca_bundle or True, max_retries=_int_setting(env, "CASUS_FHIR_MAX_RETRIES", 5))
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


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (temporary file in the same folder, fsync, rename), so a monitor
    reading it sees the previous summary or the new one, never half of one."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def emit_summary(document: dict[str, Any], summary_file: Path | None) -> str | None:
    """Print the summary, or write it to ``summary_file``; a one-line reason when the file could not be written."""
    text = json.dumps(document, indent=2, ensure_ascii=False)
    if summary_file is None:
        click.echo(text)
        return None
    try:
        write_atomically(summary_file, text + "\n")
    except OSError as exc:
        return f"cannot write the summary file ({exc.strerror})"
    return None


def server_of(env: Mapping[str, str]) -> str:
    """The normalised server the settings name (scheme, host, port and path: never a user or password), or ""."""
    from .store.sync_state import server_key

    raw = env.get("CASUS_FHIR_BASE_URL", "").strip()
    try:
        return server_key(raw) if raw else ""
    except ValueError:
        return ""


def run_sync(
    env: Mapping[str, str],
    *,
    push: bool,
    pull: bool,
    dry_run: bool,
    full: bool,
    batch_size: int,
    page_size: int,
    lock_ttl: int,
    summary_file: Path | None,
    stderr: IO[str],
) -> int:
    """Everything the command does, returning its exit code (separate from click so it reads top to bottom).

    Whatever happens, a summary is emitted: the job's own when it got as far as starting, else one naming the
    server and the reason it could not start.
    """
    from .sync import SyncAborted, SyncLocked, SyncSummary, utc_now

    summary: SyncSummary | None = None
    reason: str | None = None
    try:
        summary = _run_job(
            env, push=push, pull=pull, dry_run=dry_run, full=full, batch_size=batch_size, page_size=page_size, lock_ttl=lock_ttl, stderr=stderr
        )
    except SyncLocked as exc:
        summary, reason = exc.summary, f"skipped: {exc}; the next scheduled run will try again"
    except SyncAborted as exc:
        summary = exc.summary
        if dry_run:
            reason = f"failed, nothing was written (dry run): {exc}"
        elif summary.pushed or summary.pulled or summary.in_step:
            reason = f"failed part-way, progress so far is kept: {exc}"
        else:
            reason = f"failed: {exc}"
    except _CouldNotRun as exc:
        reason = f"failed: {exc}"
    except Exception as exc:  # the contract is one line and exit 2, never a traceback (which could echo data)
        log.debug("sync failed unexpectedly", exc_info=True)
        reason = f"failed: unexpected {type(exc).__name__}"
    if summary is None:
        summary = SyncSummary(server=server_of(env), dry_run=dry_run, full=full, ended_at=utc_now())
        summary.failure = (reason or "failed").removeprefix("failed: ")
    elif summary.failure is None and reason is not None:
        summary.failure = reason
    problem = emit_summary(summary.to_json(), summary_file)
    if reason is not None:
        log.info("sync %s", reason)
        click.echo(f"sync: {reason}", err=True)
    if problem is not None:
        click.echo(f"sync: {problem}", err=True)
        return EXIT_FAILED
    return summary.exit_code()


def _run_job(
    env: Mapping[str, str], *, push: bool, pull: bool, dry_run: bool, full: bool, batch_size: int, page_size: int, lock_ttl: int, stderr: IO[str]
) -> Any:
    from sqlalchemy.exc import SQLAlchemyError

    from .store.engine import StoreError
    from .sync import SyncJob

    client = build_client(env)
    try:
        store = open_store(env)
    except _CouldNotRun:
        client.close()
        raise
    progress = progress_for(stderr)
    try:
        job = SyncJob(store, client, batch_size=batch_size, page_size=page_size, lock_ttl_seconds=lock_ttl, progress=progress)
        return job.run(push=push, pull=pull, dry_run=dry_run, full=full)
    except (SQLAlchemyError, StoreError) as exc:
        raise _CouldNotRun(f"database error ({type(exc).__name__})") from exc
    finally:
        if progress is not None:
            progress.close()
        client.close()
        store.close()


def _configure_logging(stderr: IO[str], log_format: str = "text") -> None:
    """Errors only unless asked (CASUS_LOG_LEVEL): cron mails whatever reaches stderr.  Each line has a UTC
    timestamp and the run id; ``json`` writes one JSON object a line for a log shipper."""
    from .log_records import formatter

    root = logging.getLogger()
    if root.handlers:
        return
    level = os.environ.get("CASUS_LOG_LEVEL", "ERROR").strip().upper()
    handler = logging.StreamHandler(stderr)
    handler.setFormatter(formatter(log_format))
    root.addHandler(handler)
    root.setLevel(level if level in logging.getLevelNamesMapping() else "ERROR")


@click.group("sync", invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--push-only", is_flag=True, help="Only push local changes to the FHIR server.")
@click.option("--pull-only", is_flag=True, help="Only pull changes from the FHIR server.")
@click.option(
    "--full",
    is_flag=True,
    help="Walk every form and every server Consent from the start (idempotent: business identifier look-ups write only what the server lacks).",
)
@click.option("--dry-run", is_flag=True, help="Report what would be pushed, pulled or in conflict; write nothing anywhere.")
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(1, 1000), help="Forms per transaction Bundle.")
@click.option("--page-size", default=100, show_default=True, type=click.IntRange(1, 1000), help="Consents per search page when pulling.")
@click.option(
    "--lock-ttl",
    default=900,
    show_default=True,
    type=click.IntRange(1, 86400),
    help="Seconds the run's lease lasts without renewal (a run killed on another host blocks others this long at most).",
)
@click.option(
    "--summary-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the JSON summary here (atomically, on every outcome) instead of stdout.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines on stderr as text or one JSON object a line (UTC timestamp, level, run id; no clinical content).",
)
@click.pass_context
def sync_command(
    ctx: click.Context,
    push_only: bool,
    pull_only: bool,
    full: bool,
    dry_run: bool,
    batch_size: int,
    page_size: int,
    lock_ttl: int,
    summary_file: Path | None,
    log_format: str,
) -> None:
    """Push local consent form changes to the trust FHIR server and pull its changes back.

    Settings: CASUS_FHIR_BASE_URL (required), CASUS_FHIR_AUTH and its credentials, CASUS_FHIR_CA_BUNDLE,
    CASUS_DATABASE_URL. Prints a JSON summary. Exit 0 in step, 1 problems reported, 2 failed,
    75 skipped (another run holds the lease).
    """
    if ctx.invoked_subcommand is not None:
        return
    stderr = sys.stderr  # the real stream (CliRunner swaps it), so isatty() tells a terminal from a pipe
    _configure_logging(stderr, log_format)
    if push_only and pull_only:
        click.echo("sync: failed: --push-only and --pull-only exclude each other", err=True)
        sys.exit(EXIT_FAILED)
    sys.exit(
        run_sync(
            os.environ,
            push=not pull_only,
            pull=not push_only,
            dry_run=dry_run,
            full=full,
            batch_size=batch_size,
            page_size=page_size,
            lock_ttl=lock_ttl,
            summary_file=summary_file,
            stderr=stderr,
        )
    )


def _operator_store() -> Any:
    try:
        return open_store(os.environ)
    except _CouldNotRun as exc:
        click.echo(f"sync: failed: {exc}", err=True)
        sys.exit(EXIT_FAILED)


@sync_command.command("unlock")
def unlock_command() -> None:
    """Clear the sync lease whoever holds it (audited). Only for a holder that is gone on another host:
    a holder dead on this host is taken over by the next run without this."""
    from .sync import LOCK_NAME

    store = _operator_store()
    try:
        holder = store.sync_state.break_lock(LOCK_NAME)
        store.audit(
            actor=OPERATOR_ACTOR,
            action="sync.unlock",
            resource=None,
            outcome="cleared" if holder else "was-free",
            detail={"previousOwner": holder.owner if holder else None, "previousExpiry": holder.expires_at.isoformat() if holder else None},
        )
    finally:
        store.close()
    if holder is None:
        click.echo("sync: the lease was free")
    else:
        click.echo(f"sync: lease cleared (it was held by {holder.owner} until {holder.expires_at.isoformat(timespec='seconds')})")


def render_status(status: dict[str, Any]) -> str:
    """``sync status`` for a person: one fact a line, problems listed one a line (ids only)."""
    last = status["lastRun"]
    lines = [f"server:          {status['server']}"]
    if last is None:
        lines.append("last run:        none")
    else:
        failure = f" - {last['failure']}" if last["failure"] else ""
        lines.append(
            f"last run:        {last['outcome']} (exit {last['exitCode']}) ended {last['endedAt']}; pushed {last['pushed']}, "
            f"pulled {last['pulled']}, in step {last['inStep']}{failure}"
        )
    lines.append(f"last success:    {status['lastSuccessAt'] or 'never'}")
    lines.append(f"forms waiting:   {status['formsWaiting']}")
    lease = status["lease"]
    lines.append(
        "lease:           free"
        if lease is None
        else f"lease:           held by {lease['holder']} until {lease['expiresAt']}" + (" (holder has ended)" if lease["holderEnded"] else "")
    )
    lines.append(f"conflicts:       {len(status['conflicts'])}")
    lines += [f"  {c.get('formId')}: {c.get('reason')} (since {c.get('since')})" for c in status["conflicts"]]
    lines.append(f"rejected:        {len(status['rejected'])}")
    lines += [
        f"  {r.get('formId') or r.get('remoteId')}: {len(r['outcome'].get('issue', []))} issue(s) (since {r.get('since')})"
        for r in status["rejected"]
    ]
    return "\n".join(lines)


@sync_command.command("status")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
def status_command(output_format: str) -> None:
    """The last run, forms waiting to be pushed, the lease and outstanding conflicts and rejections, for the server
    CASUS_FHIR_BASE_URL names (every server the store knows when it is not set). Reads the database only."""
    from .sync import sync_status

    configured = server_of(os.environ)
    store = _operator_store()
    try:
        servers = [configured] if configured else store.sync_state.servers()
        statuses = [sync_status(store, server) for server in servers]
    finally:
        store.close()
    if output_format == "json":
        click.echo(json.dumps(statuses[0] if configured else statuses, indent=2))
    else:
        click.echo("\n\n".join(render_status(s) for s in statuses) or "sync: no server synced yet")


@sync_command.command("resolve")
@click.argument("form_id")
@click.option(
    "--keep", type=click.Choice(["local", "server"]), required=True, help="Which side wins: the form's latest local version, or the server's Consent."
)
def resolve_command(form_id: str, keep: str) -> None:
    """Make FORM_ID the same on both sides (audited). --keep local writes the local version over the server copy
    (If-Match on the server version just read); --keep server stores the server copy as a new local version
    (expecting the local version just read). Exit 0 resolved, 2 refused (nothing written), 75 a run holds the lease."""
    from .fhir_client import FhirError
    from .sync import ResolveRefused, SyncJob, SyncLocked, failure_reason

    _configure_logging(sys.stderr)
    try:
        client = build_client(os.environ)
    except _CouldNotRun as exc:
        click.echo(f"sync resolve: failed: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    store = _operator_store()
    try:
        result = SyncJob(store, client).resolve(form_id, "local" if keep == "local" else "server", actor=OPERATOR_ACTOR)
    except SyncLocked as exc:
        click.echo(f"sync resolve: skipped: {exc}", err=True)
        sys.exit(EXIT_SKIPPED)
    except ResolveRefused as exc:
        click.echo(f"sync resolve: refused, nothing written: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except FhirError as exc:
        click.echo(f"sync resolve: failed: {failure_reason(exc, first_request=False)}", err=True)
        sys.exit(EXIT_FAILED)
    except Exception as exc:  # one line, never a traceback
        log.debug("sync resolve failed", exc_info=True)
        click.echo(f"sync resolve: failed: {type(exc).__name__}", err=True)
        sys.exit(EXIT_FAILED)
    finally:
        client.close()
        store.close()
    click.echo(json.dumps(result, indent=2))
