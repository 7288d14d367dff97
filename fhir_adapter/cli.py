"""The ``fhir-adapter`` command line: thin — parse, call, render.

Exit codes follow the sync/validate contract: 0 success, 1 input found invalid
(or a run that finished with conflicts/rejections), 2 unusable input or could
not run.
"""

from __future__ import annotations

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
