"""Generated CASUS profile artefacts: CodeSystems, ValueSets and example Consents in ``profiles/``.

The terminology and the examples are *derived*, never retyped: CodeSystems and
ValueSets come from the declarative code tables in ``mappings/codes.py`` (the
same rows the mappings use), and each example Consent is ``form_to_r4`` of a
hand-written CASUS form kept beside it (``profiles/examples/form-*.json``).
The generated JSON is committed so integration engineers can read it without
running Python; ``--check`` (run by the test suite) fails when it has drifted
from the tables, ``--write`` regenerates it.  The StructureDefinitions are
hand-authored and only read here.

    python -m fhir_adapter.profile_artifacts --check
    python -m fhir_adapter.profile_artifacts --write
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .form import PROFILES_DIR, parse_form
from .mappings import codes
from .mappings.r4 import form_to_r4

EXAMPLES_DIR = PROFILES_DIR / "examples"
FHIR_VERSION = "4.0.1"
PUBLISHER = "Cambridgeshire and Peterborough NHS Foundation Trust (CASUS)"
ARTEFACT_VERSION = "0.1.0"
STATUS = "active"

VS_INFORMATION_TYPE = f"{codes.CASUS_BASE}/ValueSet/casus-information-type"
VS_PERSON_ROLE = f"{codes.CASUS_BASE}/ValueSet/casus-person-role"
VS_DECISION_BASIS = f"{codes.CASUS_BASE}/ValueSet/casus-decision-basis"
VS_CONSENT_STATUS = f"{codes.CASUS_BASE}/ValueSet/casus-consent-status"

EXAMPLE_ID_PREFIX = "casus-example-"


def _tail(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _title(resource_id: str) -> str:
    return " ".join(part.upper() if part == "casus" else part.capitalize() for part in resource_id.split("-"))


def _name(resource_id: str) -> str:
    return "".join(part.upper() if part == "casus" else part.capitalize() for part in resource_id.split("-"))


def _header(resource_type: str, url: str, description: str) -> dict[str, Any]:
    rid = _tail(url)
    return {
        "resourceType": resource_type,
        "id": rid,
        "url": url,
        "version": ARTEFACT_VERSION,
        "name": _name(rid),
        "title": _title(rid),
        "status": STATUS,
        "experimental": False,
        "publisher": PUBLISHER,
        "description": description,
    }


def code_system(url: str, table: codes.CodeTable, description: str) -> dict[str, Any]:
    """A complete CodeSystem holding the rows of ``table`` whose system is ``url`` (in table order)."""
    concepts = [{"code": r.code, "display": r.display} for r in table if r.system == url]
    if not concepts:
        raise ValueError(f"table {table.name} has no rows in {url}")
    return {**_header("CodeSystem", url, description), "caseSensitive": True, "content": "complete", "count": len(concepts), "concept": concepts}


def value_set(url: str, rows: Iterable[codes.Row], description: str, whole_systems: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A ValueSet including ``rows``: whole CodeSystems for ``whole_systems``, enumerated concepts otherwise.

    Includes keep the order in which systems first appear in the rows.
    """
    includes: dict[str, dict[str, Any]] = {}
    for r in rows:
        include = includes.setdefault(r.system, {"system": r.system})
        if r.system not in whole_systems:
            include.setdefault("concept", []).append({"code": r.code, "display": r.display})
    return {**_header("ValueSet", url, description), "compose": {"include": list(includes.values())}}


def terminology() -> list[dict[str, Any]]:
    """Every CASUS CodeSystem and ValueSet, built from the code tables."""
    return [
        code_system(
            codes.CS_INFORMATION_TYPE, codes.INFORMATION_TYPES, "The kinds of CASUS information a young person may agree to share, person by person."
        ),
        code_system(
            codes.CS_PERSON_ROLE,
            codes.PERSON_ROLES,
            "Roles of people involved in a young person's care that HL7 v3 RoleCode does not name "
            "(carer, GP, school, social worker, youth justice, other professionals).",
        ),
        code_system(
            codes.CS_RECIPIENT_ROLE,
            codes.EXCEPTION_ONLY_RECIPIENTS,
            "Recipients that are never on a CASUS form but that a policy exception (risk of significant harm, "
            "court order) may require CASUS to inform: a court, the police, children's social care.",
        ),
        code_system(
            codes.CS_DECISION_BASIS,
            codes.DECISION_BASIS,
            "On what basis the person who made the confidentiality decisions decides (age, Gillick competence, parental responsibility).",
        ),
        value_set(VS_INFORMATION_TYPE, codes.INFORMATION_TYPES, "All CASUS information types.", frozenset({codes.CS_INFORMATION_TYPE})),
        value_set(
            VS_PERSON_ROLE,
            codes.PERSON_ROLES,
            "Who a person on a CASUS form is: the HL7 v3 RoleCode family roles CASUS records, plus every CASUS person role.",
            frozenset({codes.CS_PERSON_ROLE}),
        ),
        value_set(VS_DECISION_BASIS, codes.DECISION_BASIS, "All CASUS decision bases.", frozenset({codes.CS_DECISION_BASIS})),
        value_set(
            VS_CONSENT_STATUS,
            codes.STATUS_R4,
            "The Consent.status codes a CASUS form can have (draft, active, withdrawn = inactive, entered-in-error).",
        ),
    ]


def example_forms() -> dict[str, dict[str, Any]]:
    """The hand-written CASUS form examples, by name (``form-<name>.json``)."""
    return {path.stem.removeprefix("form-"): json.loads(path.read_text(encoding="utf-8")) for path in sorted(EXAMPLES_DIR.glob("form-*.json"))}


def example_consent(name: str, form_document: dict[str, Any]) -> dict[str, Any]:
    """The R4 Consent the mapping produces for one example form, with a stable id."""
    consent = form_to_r4(parse_form(form_document))
    return {"resourceType": consent.pop("resourceType"), "id": EXAMPLE_ID_PREFIX + name, **consent}


def expected_files() -> dict[Path, dict[str, Any]]:
    """Every generated file (absolute path) with the JSON it must hold."""
    out = {PROFILES_DIR / f"{res['resourceType']}-{res['id']}.json": res for res in terminology()}
    for name, form_document in example_forms().items():
        out[EXAMPLES_DIR / f"Consent-{EXAMPLE_ID_PREFIX}{name}.json"] = example_consent(name, form_document)
    return out


def render(resource: dict[str, Any]) -> str:
    return json.dumps(resource, indent=2, ensure_ascii=False) + "\n"


def stale_files() -> list[Path]:
    """Generated files that are missing or differ from what the tables and example forms produce."""
    stale = []
    for path, resource in expected_files().items():
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current != render(resource):
            stale.append(path)
    return stale


def orphan_examples() -> list[Path]:
    """Generated example Consents whose source form has gone (they would otherwise linger unchecked)."""
    expected = set(expected_files())
    return [p for p in sorted(EXAMPLES_DIR.glob(f"Consent-{EXAMPLE_ID_PREFIX}*.json")) if p not in expected]


def write() -> list[Path]:
    """Write every stale generated file; returns what was written."""
    written = []
    for path, resource in expected_files().items():
        text = render(resource)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fhir_adapter.profile_artifacts", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 if any generated artefact is stale")
    mode.add_argument("--write", action="store_true", help="regenerate stale artefacts")
    args = parser.parse_args(argv)
    if args.write:
        for path in write():
            print(f"wrote {path.relative_to(PROFILES_DIR.parent)}")
        for path in orphan_examples():
            print(f"orphan (no source form; delete it): {path.relative_to(PROFILES_DIR.parent)}", file=sys.stderr)
        return 0
    problems = [f"stale: {p.relative_to(PROFILES_DIR.parent)}" for p in stale_files()]
    problems += [f"orphan: {p.relative_to(PROFILES_DIR.parent)}" for p in orphan_examples()]
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print("run: python -m fhir_adapter.profile_artifacts --write", file=sys.stderr)
        return 1
    print(f"{len(expected_files())} generated artefacts are current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
