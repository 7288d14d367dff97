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
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any
from urllib.parse import parse_qsl, urlencode

from flask import Blueprint, Response, current_app, request
from werkzeug.datastructures import MultiDict

from ..access import SCOPES
from ..consent_service import RecordedInFuture, form_from_fhir
from ..fhir_structure import element_count
from ..mappings import codes, r4, r5
from ..nhs_number import is_valid as nhs_number_is_valid
from ..outcome import Issue, error, operation_outcome
from ..store.forms import AlreadyExists, FormVersion, VersionConflict
from ..validation import CONSENT_PROFILES, Version
from ..validation_workers import ValidationWorkers
from .capability import SearchParameter, capability_statement, declared
from .protocol import (
    FHIR_JSON,
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
#: The search parameters the CapabilityStatement declares: the parser below reads each of them.
SEARCH_PARAMETERS = (
    SearchParameter(
        "patient",
        "reference",
        "the young person: Patient/<NHS number> (a Patient's id is its NHS number, as in "
        "the NHS PDS FHIR API), or patient:identifier=https://fhir.nhs.uk/Id/nhs-number|<NHS number>",
    ),
    SearchParameter("identifier", "token", "the CASUS form id: https://fhir.cpft.nhs.uk/casus/Id/consent-form|<form id>"),
    SearchParameter("status", "token", "the Consent status"),
    SearchParameter("_lastUpdated", "date", "with a prefix: gt, ge, lt or le"),
    SearchParameter("_count", "number", "page size, at most 100 (default 20); also on _history"),
    SearchParameter("_offset", "number", "where the page starts; the next link carries it"),
    SearchParameter("_summary", "token", "count (the total only) or false"),
    SearchParameter("_total", "token", "none, estimate or accurate (every total is accurate)"),
    SearchParameter("_elements", "special", "top-level Consent elements to return, comma-separated; mandatory ones always come"),
)
#: Every parameter a search accepts: the declared ones, the identifier forms of patient, and the output ones.
SEARCH_PARAMS = {p.name for p in SEARCH_PARAMETERS} | {"patient:identifier", "patient.identifier", "subject:identifier", "_format", "_pretty"}
HISTORY_PARAMS = {"_count", "_format", "_pretty"}
MAX_COUNT = 100
#: Elements every Consent carries whatever ``_elements`` asks: FHIR has servers return the mandatory ones.
MANDATORY_ELEMENTS: dict[Version, frozenset[str]] = {
    "r4": frozenset({"resourceType", "id", "meta", "status", "scope", "category"}),
    "r5": frozenset({"resourceType", "id", "meta", "status"}),
}
#: The tag FHIR puts on a resource that is not whole (v3-ObservationValue SUBSETTED).
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED", "display": "subsetted"}
JSON_FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir"}
#: A PUT without If-Match applies to whatever version is current; when another write lands first it is tried again.
PUT_ATTEMPTS = 5


@bp.before_request
def negotiate() -> None:
    """JSON only: a request for XML (or anything else) by ``_format`` or Accept gets 406, never JSON it did not ask for."""
    requested = request.args.get("_format")
    if requested is not None:
        if requested.split(";")[0].strip() not in JSON_FORMATS:
            raise problem(406, "not-supported", "_format", "only JSON is served (_format=json or application/fhir+json)")
        return
    if request.headers.get("Accept") and request.accept_mimetypes.best_match([FHIR_JSON, "application/json"]) is None:
        raise problem(406, "not-supported", "Accept", "only JSON is served: accept application/fhir+json")


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
    meta = {"versionId": str(found.version), "lastUpdated": found.stored_at.isoformat(), **resource.get("meta", {})}
    return {"resourceType": "Consent", "id": found.form_id, "meta": meta, **{k: v for k, v in resource.items() if k not in ("resourceType", "meta")}}


def recorded_time_field() -> str:
    """Where a Consent carries when the choice was made (a CASUS form's recorded.date): R5's date is only a day."""
    return "Consent.dateTime" if fhir_version() == "r4" else f"Consent.extension.where(url='{codes.EXT_RECORDED_AT}').valueDateTime"


def consent_response(found: FormVersion, status: int = 200, *, conditional: bool = False, written: bool = False) -> Any:
    """The Consent; 304 when ``conditional`` and If-None-Match names its version; for a write, what Prefer asks."""
    headers = version_headers(found.version, found.stored_at)
    if status == 201:
        headers["Location"] = f"{base_url()}/Consent/{found.form_id}/_history/{found.version}"
    if conditional and _names_version(request.headers.get("If-None-Match"), found.version):
        return Response(status=304, headers=headers)
    preference = _return_preference() if written else "representation"
    if preference == "minimal":
        return Response(status=status, headers=headers)
    if preference == "OperationOutcome":
        said = "created" if status == 201 else "updated"
        outcome = operation_outcome([Issue("information", "informational", "Consent", f"Consent {found.form_id} {said} as version {found.version}")])
        return json_response(outcome, status, fhir=True, headers=headers)
    return json_response(render_consent(found), status, fhir=True, headers=headers)


def _names_version(if_none_match: str | None, version: int) -> bool:
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or f'"{version}"' in tags


def _return_preference() -> str:
    """Prefer: return=minimal | representation | OperationOutcome (RFC 7240, as FHIR uses it); representation by default."""
    for preference in request.headers.get("Prefer", "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "return" and value.strip().strip('"') in ("minimal", "representation", "OperationOutcome"):
            return value.strip().strip('"')
    return "representation"


@bp.get("/metadata")
def metadata() -> Any:
    """Public, as SMART App Launch and common practice expect: it says what the server does, nothing about anyone."""
    version = fhir_version()
    interactions, operations = declared(current_app.url_map, request.blueprint or "fhir")
    return json_response(
        capability_statement(
            fhir_version="4.0.1" if version == "r4" else "5.0.0",
            base_url=base_url(),
            profiles=[CONSENT_PROFILES[version]],
            interactions=interactions,
            operations=operations,
            search_parameters=SEARCH_PARAMETERS,
            token_endpoint=current_app.config.get("CASUS_OAUTH_TOKEN_ENDPOINT"),
            software_version=SOFTWARE_VERSION,
        ),
        fhir=True,
    )


@bp.get("/.well-known/smart-configuration")
def smart_configuration() -> Any:
    """SMART's discovery document: public, and only when an authorisation server is configured."""
    oauth = current_app.config.get("CASUS_OAUTH")
    if oauth is None:
        raise problem(404, "not-found", "", "no OAuth authorisation server is configured; this server takes its own bearer tokens")
    document: dict[str, Any] = {
        "issuer": oauth.issuer,
        "jwks_uri": oauth.jwks_url,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": [
            "system/Consent.rs",
            "system/Consent.cu",
            "system/Consent.cruds",
            "system/Consent.read",
            "system/Consent.write",
            "system/Consent.*",
            *(f"casus/{scope}" for scope in sorted(SCOPES)),
        ],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    }
    if oauth.token_endpoint:
        document["token_endpoint"] = oauth.token_endpoint
    return json_response(document)


def _software_version() -> str:
    try:
        return package_version("casus-fhir-adapter")
    except PackageNotFoundError:
        return "0.0.0"


SOFTWARE_VERSION = _software_version()


@bp.get("/Consent/<form_id>")
@require("consent.read")
def read(form_id: str) -> Any:
    return consent_response(service().read(form_id, actor=principal().name), conditional=True)


@bp.get("/Consent/<form_id>/_history/<version>")
@require("consent.read")
def vread(form_id: str, version: str) -> Any:
    if not is_whole_number(version):
        raise problem(404, "not-found", "Consent._history", f"version {version!r} does not exist")
    return consent_response(service().read(form_id, int(version), actor=principal().name), conditional=True)


@bp.get("/Consent/<form_id>/_history")
@require("consent.read")
def history(form_id: str) -> Any:
    unknown = sorted(set(request.args) - HISTORY_PARAMS)
    if unknown:
        raise problem(400, "not-supported", unknown[0], f"history parameter {unknown[0]!r} is not supported")
    raw_count = request.args.get("_count")
    versions = service().history(form_id, actor=principal().name)
    newest_first = list(reversed(versions))
    if raw_count is not None:  # without _count, every version (a form has few)
        newest_first = newest_first[: bounded_int(raw_count, "_count", MAX_COUNT, 0, MAX_COUNT)]
    entries = [history_entry(v) for v in newest_first]
    return json_response({"resourceType": "Bundle", "type": "history", "total": len(versions), "entry": entries}, fhir=True)


def history_entry(found: FormVersion) -> dict[str, Any]:
    method = "POST" if found.version == 1 else "PUT"
    return {
        "fullUrl": f"{base_url()}/Consent/{found.form_id}",
        "resource": render_consent(found),
        "request": {"method": method, "url": "Consent" if method == "POST" else f"Consent/{found.form_id}"},
        "response": {
            "status": "201 Created" if method == "POST" else "200 OK",
            "etag": etag(found.version),
            "lastModified": found.stored_at.isoformat(),
        },
    }


@bp.get("/Consent")
@require("consent.read")
def search() -> Any:
    criteria, count, offset = search_criteria(request.args)
    summary, total_mode = request.args.get("_summary", "false"), request.args.get("_total", "accurate")
    if summary not in ("count", "false"):
        raise problem(400, "not-supported", "_summary", "_summary may be count or false")
    if total_mode not in ("none", "estimate", "accurate"):
        raise problem(400, "value", "_total", "_total must be none, estimate or accurate")
    if summary == "count":
        count = 0
    found, total = service().search(actor=principal().name, limit=count, offset=offset, **criteria)
    bundle = searchset(found, total, count, offset)
    if "_elements" in request.args:
        wanted = element_names(request.args["_elements"])
        for entry in bundle.get("entry", []):
            entry["resource"] = subsetted(entry["resource"], wanted, fhir_version())
    if total_mode == "none" and summary != "count":
        del bundle["total"]
    return json_response(bundle, fhir=True)


def element_names(raw: str) -> frozenset[str]:
    """The element names ``_elements`` lists; a name that is no FHIR element name is a 400 naming the parameter."""
    names = frozenset(n.strip() for n in raw.split(",") if n.strip())
    malformed = sorted(n for n in names if not n.isascii() or not n.isidentifier() or "." in n)
    if not names or malformed:
        raise problem(400, "value", "_elements", "_elements lists top-level element names, comma-separated, e.g. status,provision")
    return names


def subsetted(resource: dict[str, Any], wanted: frozenset[str], version: Version) -> dict[str, Any]:
    """Only the elements asked for (and the mandatory ones), tagged SUBSETTED so no reader takes it for the whole."""
    kept = {k: v for k, v in resource.items() if k in wanted or k in MANDATORY_ELEMENTS[version]}
    meta = dict(kept.get("meta", {}))
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    kept["meta"] = meta
    return kept


def search_criteria(args: Any, where: str | None = None) -> tuple[dict[str, Any], int, int]:
    unknown = sorted(set(args) - SEARCH_PARAMS)
    if unknown:
        raise problem(400, "not-supported", where or unknown[0], f"search parameter {unknown[0]!r} is not supported")
    criteria: dict[str, Any] = {}
    patient = args.get("patient:identifier") or args.get("patient.identifier") or args.get("subject:identifier")
    if patient:
        system, sep, value = patient.rpartition("|")
        if sep and system != codes.NHS_NUMBER:
            raise problem(400, "value", "patient:identifier", f"patients are searched by NHS number ({codes.NHS_NUMBER}|<number>)")
        criteria["nhs_number"] = value
    if "patient" in args:
        criteria["nhs_number"] = patient_reference(args["patient"])
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


def patient_reference(value: str) -> str:
    """The NHS number a ``patient`` reference names: Patient/<NHS number>, an absolute URL ending so, or the bare id."""
    kind, slash, patient_id = value.rstrip("/").rpartition("/")
    if slash and kind.rpartition("/")[2] != "Patient":
        raise problem(400, "value", "patient", "give a Patient reference: Patient/<NHS number>")
    if not nhs_number_is_valid(patient_id):
        raise problem(400, "value", "patient", "a Patient's id here is its NHS number (10 digits with a Modulus 11 check digit)")
    return patient_id


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
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [{"fullUrl": f"{base_url()}/Consent/{f.form_id}", "resource": render_consent(f), "search": {"mode": "match"}} for f in found],
    }


@bp.post("/Consent")
@require("form.write")
def create() -> Any:
    form = form_from_fhir(json_body(), fhir_version())
    condition = request.headers.get("If-None-Exist")
    if condition is not None:
        existing = _conditional_match(condition)
        if existing is not None:
            return consent_response(existing, 200, written=True)
    try:
        return consent_response(service().create(form, actor=principal().name), 201, written=True)
    except RecordedInFuture as exc:
        raise problem(422, "processing", recorded_time_field(), exc.issues[0].diagnostics) from None


def _conditional_match(condition: str) -> FormVersion | None:
    """The one Consent a conditional create's search finds; None for none, 412 for several (FHIR's rules)."""
    query = MultiDict(parse_qsl(condition.lstrip("?"), keep_blank_values=True))
    if not query:
        raise problem(400, "value", "If-None-Exist", "give search parameters, e.g. identifier=<system>|<form id>")
    criteria, _, _ = search_criteria(query, where="If-None-Exist")
    found, total = service().search(actor=principal().name, limit=2, offset=0, **criteria)
    if total > 1:
        raise problem(412, "multiple-matches", "If-None-Exist", f"{total} Consents match; make the condition narrower")
    return found[0] if found else None


@bp.put("/Consent/<form_id>")
@require("form.write")
def update(form_id: str) -> Any:
    body = json_body()
    if isinstance(body, dict) and body.get("id") not in (None, form_id):
        raise problem(400, "invariant", "Consent.id", "the resource id must match the URL")
    form = form_from_fhir(body, fhir_version())
    if form.form_id != form_id:
        raise problem(400, "invariant", "Consent.identifier", "the CASUS form identifier must equal the Consent id in the URL")
    asked = expected_version(required=False)
    for _ in range(PUT_ATTEMPTS):
        try:
            saved, created = service().put(form, expected_version=asked, actor=principal().name)
            return consent_response(saved, 201 if created else 200, written=True)
        except RecordedInFuture as exc:
            raise problem(422, "processing", recorded_time_field(), exc.issues[0].diagnostics) from None
        except (VersionConflict, AlreadyExists):
            if asked is not None:  # a version check the client asked for: 412 is its answer
                raise
    raise problem(409, "conflict", "Consent", f"the Consent changed {PUT_ATTEMPTS} times while this update was applied; send it again")


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
    service().store.audit(
        actor=principal().name,
        action="validate",
        resource="Consent",
        outcome="ok",
        detail={"errors": sum(i.severity in ("error", "fatal") for i in issues)},
    )
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
