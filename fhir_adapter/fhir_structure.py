"""Base FHIR structure checks with fhir.resources, reported as Issues.

fhir.resources (pydantic) checks element names, cardinality, primitive types
and regexes; it does not check required code bindings, so the few that matter
for a Consent (status, provision.type, decision) are checked here too.  Both
the reverse mappings and the profile validator start from this.

pydantic's own messages ("Input should be a valid list", "Value error, ... spec
regex") are written for Python programmers; the people reading these issues
integrate FHIR systems, so each pydantic error type is translated (one table)
into a sentence about the element, naming the FHIR type it must have and that
type's format.
"""

from __future__ import annotations

import json
import re
import types
import typing
from typing import Any, Literal

import pydantic
from fhir.resources import get_fhir_model_class as r5_model_class
from fhir.resources.consent import Consent as ConsentR5
from fhir.resources.R4B import get_fhir_model_class as r4_model_class
from fhir.resources.R4B.consent import Consent as ConsentR4

from .outcome import Issue, error

FhirVersion = Literal["r4", "r5"]
MODELS: dict[str, type[pydantic.BaseModel]] = {"r4": ConsentR4, "r5": ConsentR5}
MAX_DOCUMENT_BYTES = 1_000_000
MAX_DEPTH = 40

MODEL_CLASSES = {"r4": r4_model_class, "r5": r5_model_class}
R4_STATUS = {"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"}
R5_STATUS = {"draft", "active", "inactive", "not-done", "entered-in-error", "unknown"}
PROVISION_TYPE = {"deny", "permit"}


# pydantic error type -> what is wrong with the element, in FHIR terms.
WRONG_JSON_TYPE = {
    "list_type": "must be a JSON array, because the element repeats",
    "string_type": "must be a JSON string",
    "bool_type": "must be JSON true or false",
    "bool_parsing": "must be JSON true or false",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "decimal_type": "must be a number",
    "decimal_parsing": "must be a number",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "model_validation_format": "must be a JSON object",
    "json_invalid": "must be a JSON object",
    "json_type": "must be a JSON object",
}
WRONG_FORMAT = "is not in the format its FHIR type requires"
NOT_VALID = "does not hold a value this element can take"
# FHIR primitive type -> the format it requires (what a reader needs to correct the value).
PRIMITIVE_FORMATS = {
    "boolean": "true or false",
    "code": "text without leading, trailing or repeated white space",
    "id": "1 to 64 letters, digits, '-' or '.'",
    "string": "text",
    "markdown": "text",
    "uri": "a URI, without white space",
    "url": "a URL, without white space",
    "canonical": "a canonical URL, without white space",
    "oid": "urn:oid: followed by a dotted number",
    "uuid": "urn:uuid: followed by a UUID",
    "date": "YYYY, YYYY-MM or YYYY-MM-DD",
    "dateTime": "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with a time zone (Z or +hh:mm)",
    "instant": "YYYY-MM-DDThh:mm:ss with a time zone (Z or +hh:mm)",
    "time": "hh:mm:ss",
    "integer": "a whole number",
    "positiveInt": "a whole number above 0",
    "unsignedInt": "a whole number, 0 or more",
    "decimal": "a number",
    "base64Binary": "base64 text",
}
IGNORED_LOC_PARTS = {"__root__", "root"}  # pydantic's names for a model's own validator, not FHIR elements


def fhirpath(loc: tuple[Any, ...], root: str = "Consent") -> str:
    out = root
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def load_json(text: str | bytes, max_bytes: int = MAX_DOCUMENT_BYTES) -> tuple[Any, list[Issue]]:
    """Parse JSON text defensively: size limit, UTF-8, I-JSON (RFC 7493), nesting depth; never raises.

    I-JSON because a document two readers can read differently is a way round the checks: a repeated key
    (``"status":"withdrawn","status":"active"``) is read as the last one here and may be read as the
    first elsewhere, and a lone surrogate (``"\\ud800"``) cannot be stored or sent on as UTF-8.  Integers
    are capped at MAX_NUMBER_DIGITS digits, far below Python's 4,300-digit conversion limit (which raises).

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
        doc = json.loads(text, object_pairs_hook=_object_without_repeats, parse_int=_bounded_int, parse_constant=_no_constant)
    except NotIJson as exc:
        return None, [error("structure", exc.where, str(exc))]
    except json.JSONDecodeError as exc:
        return None, [error("structure", "", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")]
    except RecursionError:
        return None, [error("structure", "", "JSON nested too deeply")]
    if _depth(doc) > MAX_DEPTH:
        return None, [error("structure", "", f"JSON nested deeper than {MAX_DEPTH} levels")]
    if (where := _lone_surrogate(doc, "")) is not None:
        return None, [error("structure", where, "text holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape)")]
    return doc, []


#: The longest integer a document may hold: FHIR's integer64 has 19 digits, and decimals are parsed as floats.
MAX_NUMBER_DIGITS = 32


class NotIJson(ValueError):
    """The document is JSON but not I-JSON; ``where`` names the member when it is known."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.where = where


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise NotIJson(f"the member {repeated!r} appears more than once in one object", repeated)
    return found


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise NotIJson(f"a number has more than {MAX_NUMBER_DIGITS} digits")
    return int(digits)


def _no_constant(name: str) -> Any:
    raise NotIJson(f"{name} is not a JSON number")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any, where: str) -> str | None:
    """The path of the first string (key or value) holding a lone surrogate, or None."""
    if isinstance(value, str):
        return where if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if _SURROGATE.search(key):
                return where or "(a member name)"
            if (found := _lone_surrogate(item, path)) is not None:
                return found
    if isinstance(value, list):
        for n, item in enumerate(value):
            if (found := _lone_surrogate(item, f"{where}[{n}]")) is not None:
                return found
    return None


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def element_count(value: Any, stop_above: int) -> int:
    """JSON values in ``value`` (objects, arrays and primitives), counted until the count passes ``stop_above``.

    What validation costs grows with this count (and faster than linearly when most elements have issues),
    far more than with the document's bytes.
    """
    count, pending = 0, [value]
    while pending and count <= stop_above:
        item = pending.pop()
        count += 1
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return count


def base_issues(document: Any, version: FhirVersion) -> list[Issue]:
    """Structural problems of a Consent against base FHIR R4 (4.0.1) or R5 (5.0.0)."""
    if not isinstance(document, dict):
        return [error("structure", "", "a FHIR resource must be a JSON object")]
    if document.get("resourceType") != "Consent":
        return [error("structure", "resourceType", f"expected resourceType Consent, got {document.get('resourceType')!r}")]
    issues: list[Issue] = []
    unknown = _unknown_contained(document, version)
    if unknown:
        return unknown + _binding_issues(document, version)
    try:
        MODELS[version].model_validate(document)
    except pydantic.ValidationError as exc:
        for err in exc.errors()[:100]:
            loc = tuple(p for p in err["loc"] if p not in IGNORED_LOC_PARTS)
            fhir_type = element_type(MODELS[version], loc, document, version)
            issues.append(error(_issue_code(err["type"]), fhirpath(loc), message(err["type"], fhir_type)))
    except (ValueError, TypeError, LookupError, RecursionError) as exc:  # fhir.resources raises these on odd input
        issues.append(error("structure", "Consent", f"not a valid FHIR {version.upper()} Consent: base FHIR cannot read it ({type(exc).__name__})"))
    issues += _binding_issues(document, version)
    return issues


def _issue_code(pydantic_type: str) -> str:
    if pydantic_type == "missing":
        return "required"
    if pydantic_type == "extra_forbidden":
        return "structure"
    return "value"


def message(pydantic_type: str, fhir_type: str | None) -> str:
    """A pydantic error type as a sentence about the element: what is wrong, and the FHIR type and format it needs."""
    if pydantic_type == "extra_forbidden":
        return "unknown element: base FHIR has no element of this name here"
    if pydantic_type == "missing":
        return "missing required element" + (f" (FHIR {fhir_type})" if fhir_type else "")
    what = WRONG_JSON_TYPE.get(pydantic_type) or (WRONG_FORMAT if fhir_type in PRIMITIVE_FORMATS else NOT_VALID)
    if fhir_type in PRIMITIVE_FORMATS:
        return f"{what}: FHIR {fhir_type}, {PRIMITIVE_FORMATS[fhir_type]}"
    return f"{what}: FHIR {fhir_type}" if fhir_type else what


def element_type(model: type[pydantic.BaseModel], loc: tuple[Any, ...], document: Any, version: FhirVersion) -> str | None:
    """The FHIR type of the element at a pydantic error location ("dateTime", "CodeableConcept"), when it can be told.

    The document is walked beside the models so that a contained resource is described by its own resourceType.
    """
    klass: Any = model
    fhir_type = None
    node = document
    for part in loc:
        node = _child(node, part)
        if isinstance(part, int):
            if fhir_type == "Resource" and isinstance(node, dict):
                try:
                    klass = MODEL_CLASSES[version](node.get("resourceType"))
                except (KeyError, ValueError, TypeError, LookupError):
                    return None
            continue
        fields = getattr(klass, "model_fields", None)
        field = next((f for name, f in (fields or {}).items() if (f.alias or name) == part), None)
        if field is None:
            return None
        fhir_type, klass = _type_of(field.annotation)
    return fhir_type


def _child(node: Any, part: Any) -> Any:
    if isinstance(part, int):
        return node[part] if isinstance(node, list) and -len(node) <= part < len(node) else None
    return node.get(part) if isinstance(node, dict) else None


def _type_of(annotation: Any) -> tuple[str | None, Any]:
    """(FHIR type name, model class to descend into) of a fhir.resources field annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        name = type(args[1]).__name__
        return name[:1].lower() + name[1:], None
    if origin in (typing.Union, types.UnionType, list):
        return next((_type_of(a) for a in args if a is not type(None)), (None, None))
    if hasattr(annotation, "get_model_klass"):
        return annotation.__name__.removesuffix("Type"), annotation.get_model_klass()
    return None, None


def _unknown_contained(document: dict[str, Any], version: FhirVersion) -> list[Issue]:
    """Contained resources whose resourceType base FHIR does not define (fhir.resources fails on them without a location)."""
    issues = []
    for n, res in enumerate(document.get("contained") or [] if isinstance(document.get("contained"), list) else []):
        kind = res.get("resourceType") if isinstance(res, dict) else None
        try:
            MODEL_CLASSES[version](kind)
        except (KeyError, ValueError, TypeError, LookupError):
            issues.append(error("structure", f"Consent.contained[{n}].resourceType", f"{kind!r} is not a FHIR {version.upper()} resource type"))
    return issues


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
