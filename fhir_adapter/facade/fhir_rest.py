"""FHIR REST for Consent: R4 at ``/fhir`` (and ``/fhir/R4``), R5 at ``/fhir/R5``.

A path prefix chooses the FHIR version rather than the Accept header's
``fhirVersion`` parameter, because every EHR integration engine can set a base
URL while few can set media-type parameters.  The Consent's id is the CASUS
form id, and its ``meta.versionId`` the form version, so ETags, vread and
``_history`` line up with the store's versions.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, current_app, request

from ..consent_service import form_from_fhir
from ..fhir_structure import element_count
from ..mappings import codes, r4, r5
from ..outcome import error, operation_outcome
from ..store.forms import FormVersion
from ..validation import CONSENT_PROFILES, Version
from ..validation_workers import ValidationWorkers
from .protocol import (
    HttpProblem,
    etag,
    expected_version,
    instant,
    is_whole_number,
    json_body,
    json_response,
    principal,
    problem,
    require,
    service,
    version_headers,
    whole_number,
)

bp = Blueprint("fhir", __name__)
FHIR_VERSIONS: dict[str, Version] = {"fhir": "r4", "fhir_r4": "r4", "fhir_r5": "r5"}
WRITERS: dict[str, Callable[[Any], dict[str, Any]]] = {"r4": r4.form_to_r4, "r5": r5.form_to_r5}
STATUS_TO_FORM = {row.code: row.value for row in codes.STATUS_R4}
SEARCH_PARAMS = {"patient:identifier", "patient.identifier", "subject:identifier", "identifier", "status", "_lastUpdated",
                 "_count", "_offset", "_format", "_pretty"}
MAX_COUNT = 100


def fhir_version() -> Version:
    return FHIR_VERSIONS[request.blueprint or "fhir"]


def base_url() -> str:
    """The FHIR base for links: absolute only from CASUS_PUBLIC_BASE_URL, otherwise a path from the server root.

    Never from the request's Host header, which the caller writes: a link built from it could point
    another reader of the same Bundle (a cache, a log, the next client) at the caller's server.
    """
    configured = current_app.config.get("CASUS_PUBLIC_BASE_URL")
    prefix = request.root_path + bp_prefix(request.blueprint)
    return (configured.rstrip("/") if configured else "") + prefix


def bp_prefix(name: str | None) -> str:
    return {"fhir": "/fhir", "fhir_r4": "/fhir/R4", "fhir_r5": "/fhir/R5"}.get(name or "", "/fhir")


def render_consent(found: FormVersion) -> dict[str, Any]:
    resource = WRITERS[fhir_version()](found.form)
    meta = {"versionId": str(found.version), "lastUpdated": found.recorded_at.isoformat(), **resource.get("meta", {})}
    return {"resourceType": "Consent", "id": found.form_id, "meta": meta,
            **{k: v for k, v in resource.items() if k not in ("resourceType", "meta")}}


def consent_response(found: FormVersion, status: int = 200) -> Any:
    headers = version_headers(found.version, found.recorded_at)
    if status == 201:
        headers["Location"] = f"{base_url()}/Consent/{found.form_id}/_history/{found.version}"
    return json_response(render_consent(found), status, fhir=True, headers=headers)


@bp.get("/metadata")
@require(None)
def metadata() -> Any:
    version = fhir_version()
    return json_response(capability_statement(version, base_url()), fhir=True)


def capability_statement(version: Version, url: str) -> dict[str, Any]:
    interactions = ["read", "vread", "history-instance", "search-type", "create", "update"]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "publisher": "CASUS, Cambridgeshire and Peterborough NHS Foundation Trust",
        "kind": "instance",
        "software": {"name": "casus-fhir-adapter", "version": "0.1.0"},
        "implementation": {"description": "CASUS FHIR Consent adapter", "url": url},
        "fhirVersion": "4.0.1" if version == "r4" else "5.0.0",
        "format": ["application/fhir+json"],
        "rest": [{
            "mode": "server",
            "security": {"description": "Bearer tokens with scopes consent.read, form.write, validate, decision.read, admin."},
            "resource": [{
                "type": "Consent",
                "profile": CONSENT_PROFILES[version],
                "interaction": [{"code": c} for c in interactions],
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": True,
                "conditionalCreate": False,
                "searchParam": [
                    {"name": "patient", "type": "reference",
                     "documentation": "use patient:identifier=https://fhir.nhs.uk/Id/nhs-number|<NHS number>"},
                    {"name": "identifier", "type": "token"},
                    {"name": "status", "type": "token"},
                    {"name": "_lastUpdated", "type": "date"},
                ],
                "operation": [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}],
            }],
        }],
    }


@bp.get("/Consent/<form_id>")
@require("consent.read")
def read(form_id: str) -> Any:
    return consent_response(service().read(form_id, actor=principal().name))


@bp.get("/Consent/<form_id>/_history/<version>")
@require("consent.read")
def vread(form_id: str, version: str) -> Any:
    if not is_whole_number(version):
        raise problem(404, "not-found", "Consent._history", f"version {version!r} does not exist")
    return consent_response(service().read(form_id, int(version), actor=principal().name))


@bp.get("/Consent/<form_id>/_history")
@require("consent.read")
def history(form_id: str) -> Any:
    versions = service().history(form_id, actor=principal().name)
    entries = [history_entry(v) for v in reversed(versions)]
    return json_response({"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries}, fhir=True)


def history_entry(found: FormVersion) -> dict[str, Any]:
    method = "POST" if found.version == 1 else "PUT"
    return {
        "fullUrl": f"{base_url()}/Consent/{found.form_id}",
        "resource": render_consent(found),
        "request": {"method": method, "url": "Consent" if method == "POST" else f"Consent/{found.form_id}"},
        "response": {"status": "201 Created" if method == "POST" else "200 OK", "etag": etag(found.version),
                     "lastModified": found.recorded_at.isoformat()},
    }


@bp.get("/Consent")
@require("consent.read")
def search() -> Any:
    criteria, count, offset = search_criteria(request.args)
    found, total = service().search(actor=principal().name, limit=count, offset=offset, **criteria)
    return json_response(searchset(found, total, count, offset), fhir=True)


def search_criteria(args: Any) -> tuple[dict[str, Any], int, int]:
    unknown = sorted(set(args) - SEARCH_PARAMS)
    if unknown:
        raise problem(400, "not-supported", unknown[0], f"search parameter {unknown[0]!r} is not supported")
    criteria: dict[str, Any] = {}
    patient = args.get("patient:identifier") or args.get("patient.identifier") or args.get("subject:identifier")
    if patient:
        system, sep, value = patient.rpartition("|")
        if sep and system != codes.NHS_NUMBER:
            raise problem(400, "value", "patient:identifier", f"patients are searched by NHS number ({codes.NHS_NUMBER}|<number>)")
        criteria["nhs_number"] = value
    if "identifier" in args:
        system, sep, value = args["identifier"].rpartition("|")
        if sep and system != codes.ID_CONSENT_FORM:
            raise problem(400, "value", "identifier", f"Consents are identified by {codes.ID_CONSENT_FORM}|<form id>")
        criteria["form_id"] = value
    if "status" in args:
        if args["status"] not in STATUS_TO_FORM:
            raise problem(400, "code-invalid", "status", f"status must be one of {sorted(STATUS_TO_FORM)}")
        criteria["status"] = STATUS_TO_FORM[args["status"]]
    for raw in args.getlist("_lastUpdated"):
        prefix, moment = last_updated(raw)
        if prefix in ("gt", "ge"):
            criteria["updated_since"] = moment
        elif prefix in ("lt", "le"):
            criteria["updated_before"] = moment
        else:
            raise problem(400, "not-supported", "_lastUpdated", "use the gt, ge, lt or le prefix")
    count = bounded_int(args.get("_count"), "_count", 20, 0, MAX_COUNT)
    offset = bounded_int(args.get("_offset"), "_offset", 0, 0, 10_000_000)
    return criteria, count, offset


def last_updated(raw: str) -> tuple[str, datetime]:
    prefix, value = (raw[:2], raw[2:]) if raw[:2].isalpha() else ("ge", raw)
    return prefix, instant(value, "_lastUpdated")


def bounded_int(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    return max(low, min(whole_number(raw, name), high))


def searchset(found: list[FormVersion], total: int, count: int, offset: int) -> dict[str, Any]:
    params = [(k, v) for k in request.args if k not in ("_offset",) for v in request.args.getlist(k)]

    def link(relation: str, at: int) -> dict[str, str]:
        return {"relation": relation, "url": f"{base_url()}/Consent?{urlencode([*params, ('_offset', str(at))])}"}

    links = [link("self", offset)]
    if offset + count < total and count:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    return {
        "resourceType": "Bundle", "type": "searchset", "total": total, "link": links,
        "entry": [{"fullUrl": f"{base_url()}/Consent/{f.form_id}", "resource": render_consent(f), "search": {"mode": "match"}}
                  for f in found],
    }


@bp.post("/Consent")
@require("form.write")
def create() -> Any:
    form = form_from_fhir(json_body(), fhir_version())
    return consent_response(service().create(form, actor=principal().name), 201)


@bp.put("/Consent/<form_id>")
@require("form.write")
def update(form_id: str) -> Any:
    body = json_body()
    if isinstance(body, dict) and body.get("id") not in (None, form_id):
        raise problem(400, "invariant", "Consent.id", "the resource id must match the URL")
    form = form_from_fhir(body, fhir_version())
    if form.form_id != form_id:
        raise problem(400, "invariant", "Consent.identifier", "the CASUS form identifier must equal the Consent id in the URL")
    saved, created = service().put(form, expected_version=expected_version(required=False), actor=principal().name)
    return consent_response(saved, 201 if created else 200)


#: The most JSON values $validate takes: 2.5 times the largest CASUS Consent (about 400), and a bound on its CPU
#: time (1.5-2.5 s at the bound with an issue on every element; 30 ms for a valid Consent), so one caller
#: cannot starve the rest.  (Cost grows faster than the count: each issue is located in the whole document.)
MAX_VALIDATE_ELEMENTS = 1_000
#: Where the app keeps the worker processes $validate runs in.
VALIDATION_WORKERS_EXTENSION = "casus.validation_workers"


@bp.post("/Consent/$validate")
@require("validate")
def validate() -> Any:
    body = json_body()
    if (count := element_count(body, MAX_VALIDATE_ELEMENTS)) > MAX_VALIDATE_ELEMENTS:
        raise problem(413, "too-long", "", f"$validate takes at most {MAX_VALIDATE_ELEMENTS} JSON values; this body has more than {count - 1}")
    resource, profile = body, None
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        resource, profile = validate_parameters(body)
    workers: ValidationWorkers = current_app.extensions[VALIDATION_WORKERS_EXTENSION]
    issues = workers.validate(resource, fhir_version(), profile)
    if issues is None:
        raise HttpProblem(503, [error("throttled", "", "other validations are running; try again shortly")], {"Retry-After": "2"})
    service().store.audit(actor=principal().name, action="validate", resource="Consent", outcome="ok",
                          detail={"errors": sum(i.severity in ("error", "fatal") for i in issues)})
    return json_response(operation_outcome(issues), fhir=True)


def validate_parameters(body: dict[str, Any]) -> tuple[Any, str | None]:
    resource = profile = None
    for n, param in enumerate(body.get("parameter") or []):
        if not isinstance(param, dict):
            raise problem(400, "structure", f"Parameters.parameter[{n}]", "each parameter must be an object")
        if param.get("name") == "resource":
            resource = param.get("resource")
        elif param.get("name") == "profile":
            profile = param.get("valueUri") or param.get("valueCanonical")
    if resource is None:
        raise problem(400, "required", "Parameters.parameter('resource')", "give the Consent to validate in a 'resource' parameter")
    return resource, profile

