"""The CapabilityStatement, generated from the routes the app really has, so that what it declares works.

Each FHIR route's view is named in ``INTERACTIONS`` (or ``OPERATIONS``) and the statement lists the ones the
app's URL map holds under the version's prefix; search parameters come from the one table the search parser
reads.  ``tests/test_capability_statement.py`` sends every declared interaction and search parameter and fails
on any 4xx.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from werkzeug.routing import Map

#: view function name -> FHIR restful interaction code
INTERACTIONS = {"read": "read", "vread": "vread", "history": "history-instance", "update": "update", "search": "search-type", "create": "create"}
#: view function name -> (operation name, its definition)
OPERATIONS = {"validate": ("validate", "http://hl7.org/fhir/OperationDefinition/Resource-validate")}
FORMATS = ["application/fhir+json", "json"]
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
SMART_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


@dataclass(frozen=True)
class SearchParameter:
    name: str
    type: str
    documentation: str


def declared(url_map: Map, blueprint: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The interaction codes and operations the routes of ``blueprint`` serve, in the order of the tables."""
    views = {rule.endpoint.partition(".")[2] for rule in url_map.iter_rules() if rule.endpoint.startswith(f"{blueprint}.")}
    return ([code for view, code in INTERACTIONS.items() if view in views], [operation for view, operation in OPERATIONS.items() if view in views])


def capability_statement(
    *,
    fhir_version: str,
    base_url: str,
    profiles: Iterable[str],
    interactions: list[str],
    operations: list[tuple[str, str]],
    search_parameters: Iterable[SearchParameter],
    token_endpoint: str | None,
    software_version: str,
) -> dict[str, Any]:
    security: dict[str, Any] = {
        "cors": False,
        "description": "Bearer tokens with scopes consent.read, decision.read, form.write, validate, admin"
        + (
            "; or access tokens of the configured OAuth 2.0 authorisation server (SMART Backend Services, "
            "scopes system/Consent.rs, system/Consent.cu and their SMART v1 forms)"
            if token_endpoint
            else ""
        )
        + ". Reading this statement needs no token.",
    }
    if token_endpoint:
        security["service"] = [{"coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"}]}]
        security["extension"] = [{"url": SMART_OAUTH_URIS, "extension": [{"url": "token", "valueUri": token_endpoint}]}]
    profiles = list(profiles)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "publisher": "CASUS, Cambridgeshire and Peterborough NHS Foundation Trust",
        "kind": "instance",
        "software": {"name": "casus-fhir-adapter", "version": software_version},
        "implementation": {"description": "CASUS FHIR Consent adapter", "url": base_url or "/"},
        "fhirVersion": fhir_version,
        "format": FORMATS,
        "rest": [
            {
                "mode": "server",
                "security": security,
                "resource": [
                    {
                        "type": "Consent",
                        "profile": profiles[0],
                        "supportedProfile": profiles,
                        "interaction": [{"code": code} for code in interactions],
                        "versioning": "versioned-update",
                        "readHistory": True,
                        "updateCreate": True,
                        "conditionalCreate": True,
                        "conditionalRead": "not-match",
                        "conditionalUpdate": False,
                        "conditionalDelete": "not-supported",
                        "searchParam": [{"name": p.name, "type": p.type, "documentation": p.documentation} for p in search_parameters],
                        "operation": [{"name": name, "definition": definition} for name, definition in operations],
                    }
                ],
            }
        ],
    }
