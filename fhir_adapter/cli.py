"""The ``fhir-adapter`` command line: thin — parse, call, render.

Exit codes follow the sync/validate contract: 0 success, 1 input found invalid
(or a run that finished with conflicts/rejections), 2 unusable input or could
not run.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from .fhir_structure import load_json
from .form import form_to_json, parse_form
from .outcome import InvalidInput, Issue, is_blocking, operation_outcome

EXIT_OK, EXIT_INVALID, EXIT_UNUSABLE = 0, 1, 2


def _emit(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def _read(path: Path) -> tuple[Any, list[Issue]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, [Issue("fatal", "not-found", "", f"cannot read {path.name}: {exc.strerror}")]
    return load_json(data)


def detect_kind(document: Any) -> str:
    """'form', 'r4' or 'r5' from the document's shape (R5 Consents have decision/subject/grantor)."""
    if not isinstance(document, dict) or document.get("resourceType") != "Consent":
        return "form"
    r5_only = {"decision", "subject", "grantor", "grantee", "controller", "policyBasis", "regulatoryBasis", "manager", "date"}
    return "r5" if r5_only & document.keys() else "r4"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="casus-fhir-adapter")
def main() -> None:
    """CASUS FHIR Consent adapter."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--fhir-version", type=click.Choice(["auto", "r4", "r5"]), default="auto", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary line per file.")
def validate(files: tuple[Path, ...], fhir_version: str, quiet: bool) -> None:
    """Validate Consent FILES against base FHIR and the CASUS profile.

    Prints one OperationOutcome per file. Exit 0 when all are valid, 1 when any
    is invalid, 2 when any file cannot be read or parsed.
    """
    from .validation import validate_consent

    worst = EXIT_OK
    for path in files:
        document, issues = _read(path)
        if issues:
            worst = EXIT_UNUSABLE
        else:
            version = detect_kind(document) if fhir_version == "auto" else fhir_version
            issues = validate_consent(document, "r5" if version == "r5" else "r4")
            if is_blocking(issues):
                worst = max(worst, EXIT_INVALID)
        verdict = "invalid" if is_blocking(issues) else "valid"
        click.echo(f"{path}: {verdict} ({sum(i.severity in ('error', 'fatal') for i in issues)} errors)", err=True)
        if not quiet:
            _emit(operation_outcome(issues))
    sys.exit(worst)


@main.command("map")
@click.option("--to", "target", type=click.Choice(["r4", "r5", "form"]), required=True)
@click.option("--from", "source", type=click.Choice(["auto", "form", "r4", "r5"]), default="auto", show_default=True)
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def map_command(target: str, source: str, file: Path) -> None:
    """Map FILE (a CASUS form, an R4 or an R5 Consent) to R4, R5 or the form.

    Prints the result, or an OperationOutcome naming every element that could
    not be mapped (exit 1); exit 2 when FILE cannot be read or parsed.
    """
    from .mappings import r4, r5

    document, issues = _read(file)
    if issues:
        _emit(operation_outcome(issues))
        sys.exit(EXIT_UNUSABLE)
    kind = detect_kind(document) if source == "auto" else source
    readers = {"form": parse_form, "r4": r4.r4_to_form, "r5": r5.r5_to_form}
    writers = {"form": form_to_json, "r4": r4.form_to_r4, "r5": r5.form_to_r5}
    try:
        _emit(writers[target](readers[kind](document)))
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
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--threads", default=8, show_default=True, type=int, help="Worker threads (waitress).")
def serve(host: str, port: int, threads: int) -> None:
    """Run the facade under waitress, a production WSGI server, with settings from the environment.

    CASUS_DATABASE_URL (default sqlite:///instance/casus.sqlite3), CASUS_TOKENS_FILE or CASUS_TOKENS.
    """
    import waitress

    from .server import create_app

    settings = _settings_or_exit()
    if not settings.grants:
        click.echo("configuration error: no bearer tokens configured (CASUS_TOKENS_FILE or CASUS_TOKENS)", err=True)
        sys.exit(EXIT_UNUSABLE)
    app = create_app(settings)
    click.echo(f"serving the CASUS facade on http://{host}:{port} ({threads} threads)", err=True)
    waitress.serve(app, host=host, port=port, threads=threads, ident="casus", clear_untrusted_proxy_headers=True)


DEMO_ROLES = {
    "ehr": ["decision.read", "consent.read"],
    "clinician": ["form.write", "consent.read", "decision.read"],
    "engineer": ["validate"],
    "admin": ["admin"],
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


def _load_demo_forms(app: Any, examples: Path) -> int:
    from .store.forms import AlreadyExists

    service = app.extensions["casus"]
    loaded = 0
    for path in sorted(examples.glob("form-*.json")):
        form = parse_form(json.loads(path.read_text(encoding="utf-8")))
        try:
            service.create(form, actor="demo-loader")
            loaded += 1
        except AlreadyExists:
            pass
    return loaded


@main.command()
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--database", default="instance/casus-demo.sqlite3", show_default=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--smoke", is_flag=True, help="Start, ask a few questions over HTTP, print the answers and stop (used by the tests).")
def demo(port: int, database: Path, smoke: bool) -> None:
    """Start the facade on the embedded default (SQLite) with sample young people loaded."""
    import threading

    from waitress.server import create_server

    from .access import TokenGrant
    from .config import Settings, hash_token
    from .form import PROFILES_DIR
    from .server import create_app

    token_file = database.parent / "demo-tokens.env"
    tokens = _demo_tokens(token_file)
    grants = tuple(TokenGrant(role, hash_token(tokens[role]), frozenset(scopes)) for role, scopes in DEMO_ROLES.items())
    app = create_app(Settings(database_url=f"sqlite:///{database}", grants=grants))
    loaded = _load_demo_forms(app, PROFILES_DIR / "examples")
    server = create_server(app, host="127.0.0.1", port=port, threads=4, ident="casus-demo")
    port = server.effective_port  # type: ignore[union-attr]
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
Demo tokens are in {token_file} (not printed). In another shell:

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
        answer = session.get(f"{base}/api/decision", timeout=10, params={
            "patient": nhs, "recipient-role": "mother", "information-type": "attendance", "purpose": "TREAT"}).json()
    return {"activeConsents": found.get("total"), "sampleDecision": answer,
            "health": requests.get(f"{base}/health/ready", timeout=10).json()}


from .sync_cli import sync_command  # noqa: E402  (registered last: the sync command lives in its own module)

main.add_command(sync_command, "sync")
