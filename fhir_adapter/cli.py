"""The ``fhir-adapter`` command line: thin — parse, call, render.

Exit codes follow the sync/validate contract: 0 success, 1 input found invalid
(or a run that finished with conflicts/rejections), 2 unusable input or could
not run.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NoReturn

import click

from .cli_inputs import STDIN, Input, bundle_resources, detect_kind, is_bundle, plan, read_inputs, read_one, relocate
from .form import form_to_json, parse_form
from .outcome import InvalidInput, Issue, is_blocking, operation_outcome

EXIT_OK, EXIT_INVALID, EXIT_UNUSABLE = 0, 1, 2


def _emit(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="casus-fhir-adapter")
def main() -> None:
    """CASUS FHIR Consent adapter."""


#: From this many files on, a terminal shows how far validation has got.
PROGRESS_FROM_FILES = 10


class FileProgress:
    """``validated 40/600 files`` on a terminal, rewritten in place and cleared before each result is printed."""

    def __init__(self, stream: IO[str], total: int) -> None:
        self._stream, self._total, self._done = stream, total, 0

    @classmethod
    def for_stream(cls, stream: IO[str], total: int) -> FileProgress | None:
        """Only on a terminal and only for many files: pipes, CI logs and single files stay quiet."""
        isatty = getattr(stream, "isatty", None)
        return cls(stream, total) if total >= PROGRESS_FROM_FILES and isatty is not None and isatty() else None

    def clear(self) -> None:
        self._stream.write("\r\033[K")
        self._stream.flush()

    def advance(self) -> None:
        self._done += 1
        self._stream.write(f"\rvalidated {self._done}/{self._total} files")
        self._stream.flush()


def _validate_document(document: Any, fhir_version: str) -> list[Issue]:
    """Issues for one Consent, or for each Consent of a Bundle located at ``Bundle.entry[i].resource``."""
    from .validation import validate_consent

    def one(resource: Any) -> list[Issue]:
        version = detect_kind(resource) if fhir_version == "auto" else fhir_version
        return validate_consent(resource, "r5" if version == "r5" else "r4")

    if not is_bundle(document):
        return one(document)
    resources, issues = bundle_resources(document)
    for location, resource in resources:
        issues += [relocate(issue, location) for issue in one(resource)]
    return issues


def _count(issues: list[Issue], severities: tuple[str, ...], noun: str) -> str:
    n = sum(i.severity in severities for i in issues)
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _text_report(item: Input, issues: list[Issue], quiet: bool) -> str:
    if is_blocking(issues):
        lines = [f"{item.label}: invalid ({_count(issues, ('error', 'fatal'), 'error')})"]
    elif any(i.severity == "warning" for i in issues):
        lines = [f"{item.label}: valid ({_count(issues, ('warning',), 'warning')})"]
    else:
        lines = [f"{item.label}: valid"]
    if not quiet:
        lines += [f"  {i.severity} {i.expression or '(document)'}: {i.diagnostics}" for i in issues]
    return "\n".join(lines)


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="FILE|FOLDER|-...")
@click.option("--fhir-version", type=click.Choice(["auto", "r4", "r5"]), default="auto", show_default=True)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: a verdict line per file, then its issues; json: an OperationOutcome per file (a Bundle of them for several).",
)
@click.option("--quiet", "-q", is_flag=True, help="text: only the verdict line per file.")
def validate(inputs: tuple[str, ...], fhir_version: str, output_format: str, quiet: bool) -> None:
    """Validate Consents against base FHIR and the CASUS profile.

    Each input is a Consent file, a Bundle of Consents (every entry is checked and its issues are located
    at Bundle.entry[i].resource), a folder (every *.json file directly in it) or - for standard input.
    Exit 0 when all are valid, 1 when any is invalid, 2 when any cannot be read or parsed (one line on
    stderr names the file and why).
    """
    planned = plan(inputs)
    progress = FileProgress.for_stream(sys.stderr, len(planned))
    worst, tally = EXIT_OK, {"valid": 0, "invalid": 0, "unusable": 0}
    outcomes: list[tuple[Input, dict[str, Any]]] = []
    for item in read_inputs(planned, sys.stdin.buffer):
        if progress is not None:
            progress.clear()
        if item.usable:
            issues = _validate_document(item.document, fhir_version)
            verdict = "invalid" if is_blocking(issues) else "valid"
            if output_format == "text":
                click.echo(_text_report(item, issues, quiet))
        else:
            issues, verdict = item.problems, "unusable"
            click.echo(f"{item.label}: {issues[0].diagnostics}", err=True)
        worst = max(worst, {"valid": EXIT_OK, "invalid": EXIT_INVALID, "unusable": EXIT_UNUSABLE}[verdict])
        tally[verdict] += 1
        if output_format == "json":
            outcomes.append((item, operation_outcome(issues)))
        if progress is not None:
            progress.advance()
    if progress is not None:
        progress.clear()
    if output_format == "json":
        _emit(outcomes[0][1] if len(planned) == 1 else _outcome_bundle(outcomes))
    if len(planned) > 1:
        click.echo(f"{len(planned)} files: " + ", ".join(f"{n} {verdict}" for verdict, n in tally.items() if n), err=True)
    sys.exit(worst)


def _outcome_bundle(outcomes: list[tuple[Input, dict[str, Any]]]) -> dict[str, Any]:
    """A collection Bundle of OperationOutcomes, each entry's fullUrl naming its file (stdin has none)."""
    entries = []
    for item, outcome in outcomes:
        entry: dict[str, Any] = {"resource": outcome}
        if item.label != "<stdin>":
            entry["fullUrl"] = Path(item.label).resolve().as_uri()
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "collection", "total": len(entries), "entry": entries}


@main.command("map")
@click.option("--to", "target", type=click.Choice(["r4", "r5", "form"]), required=True)
@click.option("--from", "source", type=click.Choice(["auto", "form", "r4", "r5"]), default="auto", show_default=True)
@click.argument("file", metavar="FILE|-")
def map_command(target: str, source: str, file: str) -> None:
    """Map FILE (a CASUS form, an R4 or an R5 Consent; - for standard input) to R4, R5 or the form.

    Prints the result, or an OperationOutcome naming every element that could
    not be mapped (exit 1); exit 2 when FILE cannot be read or parsed.
    Between R4 and R5 the Consent keeps its id.
    """
    from .mappings import cross_version, r4, r5

    item = read_one("<stdin>" if file == STDIN else file, None if file == STDIN else Path(file), sys.stdin.buffer)
    if not item.usable:
        click.echo(f"{item.label}: {item.problems[0].diagnostics}", err=True)
        _emit(operation_outcome(item.problems))
        sys.exit(EXIT_UNUSABLE)
    kind = detect_kind(item.document) if source == "auto" else source
    across: dict[tuple[str, str], Callable[[Any], dict[str, Any]]] = {("r4", "r5"): cross_version.r4_to_r5, ("r5", "r4"): cross_version.r5_to_r4}
    readers = {"form": parse_form, "r4": r4.r4_to_form, "r5": r5.r5_to_form}
    writers = {"form": form_to_json, "r4": r4.form_to_r4, "r5": r5.form_to_r5}
    try:
        convert = across.get((kind, target)) or (lambda document: writers[target](readers[kind](document)))
        _emit(convert(item.document))
    except InvalidInput as exc:
        _emit(operation_outcome(exc.issues))
        sys.exit(EXIT_INVALID)


def _settings_or_exit() -> Any:
    from .config import ConfigurationError, Settings

    try:
        return Settings.from_env()
    except ConfigurationError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(EXIT_UNUSABLE)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--threads", default=8, show_default=True, type=int, help="Worker threads (waitress), in each process.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes sharing the socket (one per core; needs fork: Linux).",
)
def serve(host: str, port: int, threads: int, workers: int) -> None:
    """Run the facade under waitress, a production WSGI server, with settings from the environment.

    CASUS_DATABASE_URL (default sqlite:///instance/casus.sqlite3), CASUS_TOKENS_FILE or CASUS_TOKENS.
    """
    settings = _settings_or_exit()
    if not settings.grants and settings.oauth is None:
        _fail("configuration error: no bearer tokens configured (CASUS_TOKENS_FILE or CASUS_TOKENS) and no CASUS_OAUTH_ISSUER")
    app = _app_or_exit(settings, "CASUS_DATABASE_URL")  # opens the store and migrates it, once, before any worker starts
    limits = _serving_limits(settings, threads)
    if workers > 1:
        _serve_workers(app, settings, host, port, limits, workers)
    server = _listen_or_exit(app, host, port, limits, ident="casus")
    click.echo(
        f"serving the CASUS facade on http://{host}:{server.effective_port} ({threads} threads, at most {server.adj.connection_limit} connections)",
        err=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.run()


def _serve_workers(app: Any, settings: Any, host: str, port: int, limits: Any, workers: int) -> NoReturn:
    """``serve --workers N``: the socket bound here, N forked waitress processes on it (see worker_processes)."""
    from .facade.protocol import service
    from .server import create_app
    from .serving import taking_turns, use_switch_interval
    from .worker_processes import listening_socket, run_workers

    service(app).store.close()  # each worker opens its own: connections must not cross a fork
    try:
        sock = listening_socket(host, port)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or type(exc).__name__}")
    click.echo(
        f"serving the CASUS facade on http://{host}:{sock.getsockname()[1]} ({workers} worker processes, {limits.threads} threads each)", err=True
    )
    use_switch_interval(limits)  # set before the fork: every worker inherits it
    try:
        status = run_workers(lambda: taking_turns(create_app(settings), limits), sock, workers, ident="casus", **limits.waitress_options())
    except OSError as exc:
        _fail(f"cannot start worker processes: {exc}")
    sys.exit(status)


def _fail(message: str) -> NoReturn:
    """The could-not-run contract: one line on stderr, exit 2, no traceback."""
    click.echo(message, err=True)
    sys.exit(EXIT_UNUSABLE)


def _app_or_exit(settings: Any, setting: str) -> Any:
    """The facade on the store ``settings`` name; a store that cannot be opened is one line naming ``setting``.

    Only our own StoreError text is shown (it names the database kind); other errors by type alone, as the
    URL may hold a password.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from .server import create_app
    from .store.engine import StoreError

    try:
        return create_app(settings)
    except StoreError as exc:
        _fail(f"configuration error: {setting}: {exc}")
    except ImportError as exc:
        _fail(
            f"configuration error: {setting} names a database whose driver ({exc.name}) is not installed; "
            "for PostgreSQL install casus-fhir-adapter[postgres]"
        )
    except (SQLAlchemyError, OSError, ValueError) as exc:
        _fail(f"cannot open the database named by {setting} ({type(exc).__name__})")


def _serving_limits(settings: Any, threads: int) -> Any:
    from .serving import ServingLimits

    return ServingLimits(
        threads=threads,
        connection_limit=settings.connection_limit,
        channel_timeout_seconds=settings.channel_timeout_seconds,
        trusted_proxy=settings.trusted_proxy,
        max_body_bytes=settings.max_body_bytes,
        switch_interval_microseconds=settings.switch_interval_microseconds,
        running_requests=settings.running_requests,
    )


def _listen_or_exit(app: Any, host: str, port: int, limits: Any, *, ident: str) -> Any:
    """A waitress server bound to host:port (0 picks a free port) with ``limits``, or one line saying why it cannot listen."""
    from .serving import create_server

    try:
        return create_server(app, host, port, limits, ident=ident)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or type(exc).__name__}")


DEMO_ROLES = {
    "ehr": ["decision.read", "consent.read"],
    "clinician": ["form.write", "consent.read", "decision.read"],
    "engineer": ["validate"],
    "admin": ["admin"],
    "decider": ["decision.read"],  # a system that may only ask, to see the answer that reveals nothing
}


def _demo_tokens(path: Path) -> dict[str, str]:
    """Random demo tokens, kept in a 0600 file rather than printed: the CLI never prints secrets."""
    import secrets

    if path.exists():
        pairs = dict(line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        tokens = {role: pairs.get(f"CASUS_DEMO_{role.upper()}_TOKEN", "") for role in DEMO_ROLES}
        if all(tokens.values()):
            return tokens
    tokens = {role: secrets.token_urlsafe(24) for role in DEMO_ROLES}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text("".join(f"export CASUS_DEMO_{r.upper()}_TOKEN={t}\n" for r, t in tokens.items()))
    return tokens


#: The demo's user of the consent pages; the password is random, kept in the tokens file.
DEMO_USER = "demo"


def _demo_password(path: Path) -> str:
    """The demo user's password: from the 0600 tokens file, added to it the first time."""
    import secrets

    line = next((x for x in path.read_text().splitlines() if x.startswith("export CASUS_DEMO_PASSWORD=")), None)
    if line:
        return line.split("=", 1)[1]
    password = secrets.token_urlsafe(12)
    with path.open("a") as out:
        out.write(f"export CASUS_DEMO_PASSWORD={password}\n")
    return password


def _load_demo_forms(app: Any, examples: Path) -> int:
    from .store.forms import AlreadyExists

    paths = sorted(examples.glob("form-*.json"))
    if not paths:
        _fail(f"the sample forms are missing from this installation (no form-*.json in {examples})")
    service = app.extensions["casus"]
    loaded = 0
    for path in paths:
        form = parse_form(json.loads(path.read_text(encoding="utf-8")))
        try:
            service.create(form, actor="demo-loader")
            loaded += 1
        except AlreadyExists:
            pass
    return loaded


@main.command()
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--database", default="instance/casus-demo.sqlite3", show_default=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--smoke", is_flag=True, help="Start, ask a few questions over HTTP, print the answers and stop (used by the tests).")
def demo(port: int, database: Path, smoke: bool) -> None:
    """Start the facade on the embedded default (SQLite) with sample young people loaded."""
    import threading

    from werkzeug.security import generate_password_hash

    from .access import PasswordUser, TokenGrant
    from .config import Settings, hash_token
    from .form import PROFILES_DIR

    token_file = database.parent / "demo-tokens.env"
    tokens = _demo_tokens(token_file)
    grants = tuple(TokenGrant(role, hash_token(tokens[role]), frozenset(scopes)) for role, scopes in DEMO_ROLES.items())
    user = PasswordUser(DEMO_USER, "Demo Clinician", generate_password_hash(_demo_password(token_file)), frozenset(DEMO_ROLES["clinician"]))
    settings = Settings(database_url=f"sqlite:///{database}", grants=grants, users=(user,))
    app = _app_or_exit(settings, "--database")
    loaded = _load_demo_forms(app, PROFILES_DIR / "examples")
    server = _listen_or_exit(app, "127.0.0.1", port, _serving_limits(settings, 4), ident="casus-demo")
    port = server.effective_port
    base = f"http://127.0.0.1:{port}"
    click.echo(f"CASUS demo: {loaded} sample forms loaded into {database}; serving on {base}", err=True)
    click.echo(_demo_help(base, token_file), err=True)
    if not smoke:
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
        return
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _emit(_smoke(base, tokens))
    finally:
        server.close()


def _demo_help(base: str, token_file: Path) -> str:
    return f"""
The consent pages: open {base}/consent/ and sign in as "{DEMO_USER}" with the password CASUS_DEMO_PASSWORD from
{token_file} (not printed). Sample young people by NHS number: 943 476 5919, 485 777 3457, 401 023 2137, 450 557 7104.

Demo tokens are in the same file. In another shell:

  source {token_file}
  curl -s -H "Authorization: Bearer $CASUS_DEMO_EHR_TOKEN" \\
    "{base}/api/decision?patient=9434765919&recipient-role=mother&information-type=attendance&purpose=TREAT"
  curl -s -H "Authorization: Bearer $CASUS_DEMO_EHR_TOKEN" "{base}/fhir/Consent?patient:identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919"
  curl -s -H "Authorization: Bearer $CASUS_DEMO_EHR_TOKEN" "{base}/fhir/R5/Consent?status=active"
  curl -s -H "Authorization: Bearer $CASUS_DEMO_ADMIN_TOKEN" "{base}/api/audit"

The OpenAPI document is at {base}/openapi.json. Stop with Ctrl-C.
"""


def _smoke(base: str, tokens: dict[str, str]) -> dict[str, Any]:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {tokens['ehr']}"
    found = session.get(f"{base}/fhir/Consent", params={"status": "active", "_count": "5"}, timeout=10).json()
    first = found["entry"][0]["resource"] if found.get("entry") else None
    answer = None
    if first:
        nhs = first["patient"]["identifier"]["value"]
        answer = session.get(
            f"{base}/api/decision",
            timeout=10,
            params={"patient": nhs, "recipient-role": "mother", "information-type": "attendance", "purpose": "TREAT"},
        ).json()
    return {"activeConsents": found.get("total"), "sampleDecision": answer, "health": requests.get(f"{base}/health/ready", timeout=10).json()}


@main.group()
def profiles() -> None:
    """Build artefacts from the CASUS profiles."""


@profiles.command("package")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where to write the packages (default: profiles/package).",
)
@click.option(
    "--tools",
    "tools_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the Node tools are installed (default: .cache/fhir-package; `make package-tools` installs them).",
)
def package_command(out_dir: Path | None, tools_dir: Path | None) -> None:
    """Build the CASUS profiles as FHIR NPM packages (R4 and R5): snapshots, narratives, index, ImplementationGuide, .tgz.

    Exit 2 when the snapshot generator is not installed or fails.
    """
    from . import fhir_package

    try:
        written = fhir_package.build_all(out_dir or fhir_package.OUTPUT_DIR, tools_dir or fhir_package.TOOLS_DIR)
    except fhir_package.PackageError as exc:
        click.echo(f"package: {exc}", err=True)
        sys.exit(EXIT_UNUSABLE)
    for path in written:
        click.echo(str(path))


from .sync_cli import sync_command  # noqa: E402  (registered last: the sync command lives in its own module)

main.add_command(sync_command, "sync")
