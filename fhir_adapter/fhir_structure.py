"""Base FHIR structure checks with fhir.resources, reported as Issues.

fhir.resources (pydantic) checks element names, cardinality, primitive types
and regexes; it does not check required code bindings, so the few that matter
for a Consent (status, provision.type, decision) are checked here too.  Both
the reverse mappings and the profile validator start from this.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pydantic
from fhir.resources.consent import Consent as ConsentR5
from fhir.resources.R4B.consent import Consent as ConsentR4

from .outcome import Issue, error

FhirVersion = Literal["r4", "r5"]
MODELS = {"r4": ConsentR4, "r5": ConsentR5}
MAX_DOCUMENT_BYTES = 1_000_000
MAX_DEPTH = 40

R4_STATUS = {"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"}
R5_STATUS = {"draft", "active", "inactive", "not-done", "entered-in-error", "unknown"}
PROVISION_TYPE = {"deny", "permit"}


def fhirpath(loc: tuple[Any, ...], root: str = "Consent") -> str:
    out = root
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def load_json(text: str | bytes, max_bytes: int = MAX_DOCUMENT_BYTES) -> tuple[Any, list[Issue]]:
    """Parse JSON text defensively: size limit, UTF-8, nesting depth; never raises.

    ``max_bytes`` is raised only by the CLI, which reads local Bundles of many Consents, never request bodies.
    """
    if len(text) > max_bytes:
        return None, [error("too-long", "", f"document is larger than {max_bytes} bytes")]
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, [error("structure", "", f"document is not UTF-8 (byte {exc.start})")]
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [error("structure", "", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")]
    except RecursionError:
        return None, [error("structure", "", "JSON nested too deeply")]
    if _depth(doc) > MAX_DEPTH:
        return None, [error("structure", "", f"JSON nested deeper than {MAX_DEPTH} levels")]
    return doc, []


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def base_issues(document: Any, version: FhirVersion) -> list[Issue]:
    """Structural problems of a Consent against base FHIR R4 (4.0.1) or R5 (5.0.0)."""
    if not isinstance(document, dict):
        return [error("structure", "", "a FHIR resource must be a JSON object")]
    if document.get("resourceType") != "Consent":
        return [error("structure", "resourceType", f"expected resourceType Consent, got {document.get('resourceType')!r}")]
    issues: list[Issue] = []
    try:
        MODELS[version].model_validate(document)
    except pydantic.ValidationError as exc:
        for err in exc.errors()[:100]:
            loc = tuple(p for p in err["loc"] if p != "__root__")
            issues.append(error(_issue_code(err["type"]), fhirpath(loc), _message(err)))
    except (ValueError, TypeError, LookupError, RecursionError) as exc:  # e.g. KeyError: an unknown contained resourceType
        issues.append(error("structure", "Consent", f"not a valid FHIR Consent: {str(exc)[:200]}"))
    issues += _binding_issues(document, version)
    return issues


def _issue_code(pydantic_type: str) -> str:
    if pydantic_type == "missing":
        return "required"
    if pydantic_type == "extra_forbidden":
        return "structure"
    return "value"


def _message(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown element"
    if err["type"] == "missing":
        return "missing required element"
    return str(err["msg"])[:300]


def _binding_issues(doc: dict[str, Any], version: FhirVersion) -> list[Issue]:
    issues = []
    allowed = R4_STATUS if version == "r4" else R5_STATUS
    if isinstance(doc.get("status"), str) and doc["status"] not in allowed:
        issues.append(error("code-invalid", "Consent.status", f"'{doc['status']}' is not in the required ConsentState value set"))
    if version == "r5" and isinstance(doc.get("decision"), str) and doc["decision"] not in PROVISION_TYPE:
        issues.append(error("code-invalid", "Consent.decision", f"'{doc['decision']}' is not permit or deny"))
    if version == "r4":
        issues += _provision_type_issues(doc.get("provision"), "Consent.provision")
    return issues


def _provision_type_issues(provision: Any, where: str) -> list[Issue]:
    if not isinstance(provision, dict):
        return []
    issues = []
    if isinstance(provision.get("type"), str) and provision["type"] not in PROVISION_TYPE:
        issues.append(error("code-invalid", f"{where}.type", f"'{provision['type']}' is not permit or deny"))
    for n, child in enumerate(provision.get("provision") or []):
        issues += _provision_type_issues(child, f"{where}.provision[{n}]")
    return issues
