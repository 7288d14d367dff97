"""Validate a Consent against base FHIR, the CASUS profile, and the CASUS form it must map to.

Four stages, each adding ``Issue``s (nothing raises for bad input):

a. base FHIR structure (``fhir_structure.base_issues``: element names, cardinality, types, required
   bindings) plus the one base R4 invariant fhir.resources skips (ppc-1);
b. when the resource claims the CASUS profile of its FHIR version in ``meta.profile`` (R4 ``casus-consent``,
   R5 ``casus-consent-r5``) or the caller asks for it: the profile's own rules, read from the
   StructureDefinition JSON in ``profiles/`` — cardinality, fixed and pattern values, required bindings to
   the CASUS ValueSets (expanded from the CodeSystem/ValueSet JSON beside it), closed slicing, reference
   targets, the extension StructureDefinitions, the profiles of contained people (type slices of
   ``contained``), and every ``constraint.expression`` evaluated with fhirpathpy under the profile's FHIR
   version; rules on an element that base FHIR repeats by contentReference (``Consent.provision``) hold at
   every depth, as in the HL7 validator.  Nothing about the profile is retyped here, so the published
   artefacts and the validator cannot disagree;
c. the code rules FHIRPath cannot express, registered under the constraint key whose ``requirements``
   document them (casus-6: the NHS number's Modulus 11 check digit);
d. whether the Consent maps to a CASUS form at all (``r4_to_form`` / ``r5_to_form``), whose issues name
   every element the form cannot hold.

Any Consent with an error gets a headline issue saying it is not a CASUS consent, with the first reasons.
Issues that say the same thing at the same place are reported once (the earliest stage wins).  Issues are
kept true of the Consent at hand: one without a CASUS decision basis is told so once (and its grantor is not
judged against a basis it lacks), and a finding about an absent element becomes one missing-element issue at
the first absent ancestor, so every location names an element that is there or a missing one whose parent is.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import fhirpathpy
from fhirpathpy.models import models as fhirpath_models

from . import nhs_number
from .fhir_structure import MAX_DEPTH, base_issues, load_json
from .form import PROFILES_DIR
from .mappings import codes
from .outcome import InvalidInput, Issue, Severity, error

log = logging.getLogger(__name__)

Version = Literal["r4", "r5"]
ARTEFACT_TYPES = frozenset({"StructureDefinition", "CodeSystem", "ValueSet"})
NOT_CASUS = "not a CASUS consent"
HEADLINE_REASONS = 5
PPC_1 = "policy.exists() or policyRule.exists()"
PROFILE_CONSENT_R5 = f"{codes.CASUS_BASE}/StructureDefinition/casus-consent-r5"
CONSENT_PROFILES: dict[Version, str] = {"r4": codes.PROFILE_CONSENT, "r5": PROFILE_CONSENT_R5}


# --------------------------------------------------------------------------- artefacts (loaded once)


@dataclass(frozen=True)
class Artefacts:
    """The profile artefacts in ``profiles/``, by canonical URL."""

    structure_definitions: dict[str, dict[str, Any]]
    code_systems: dict[str, dict[str, Any]]
    value_sets: dict[str, dict[str, Any]]


@lru_cache(maxsize=1)
def artefacts() -> Artefacts:
    """Every StructureDefinition, CodeSystem and ValueSet under ``profiles/`` (other JSON, e.g. schemas, is skipped)."""
    found: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in ARTEFACT_TYPES}
    for path in sorted(PROFILES_DIR.glob("*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(resource, dict) and resource.get("resourceType") in ARTEFACT_TYPES:
            found[resource["resourceType"]][resource["url"]] = resource
    return Artefacts(found["StructureDefinition"], found["CodeSystem"], found["ValueSet"])


@lru_cache(maxsize=32)
def expansion(value_set_url: str) -> frozenset[tuple[str, str]] | None:
    """(system, code) pairs of a CASUS ValueSet, or None when it is not one of ours (then it is not checked)."""
    vs = artefacts().value_sets.get(value_set_url)
    if vs is None:
        return None
    pairs: set[tuple[str, str]] = set()
    for include in vs.get("compose", {}).get("include", []):
        system = include["system"]
        if "concept" in include:
            pairs |= {(system, c["code"]) for c in include["concept"]}
        elif system in artefacts().code_systems:
            pairs |= {(system, c["code"]) for c in artefacts().code_systems[system]["concept"]}
        else:
            return None  # a whole external code system: we cannot expand it, so we do not pretend to check it
    return frozenset(pairs)


# --------------------------------------------------------------------------- compiled rules


# Elements the base specification defines by contentReference to another element (R4 and R5 alike): a nested
# provision is "#Consent.provision".  The HL7 validator applies a profile's rules on the referenced element and
# its children to the referring element at every depth, so this validator does too, and a rule the profiles put
# on Consent.provision must hold of every nested provision.
CONTENT_REFERENCES: dict[str, str] = {"Consent.provision.provision": "Consent.provision"}

RuleKind = Literal["min", "max", "fixed", "pattern", "binding", "type", "target", "closed", "constraint", "extension", "profile"]
NESTED_KINDS = frozenset({"extension", "profile"})  # rules that apply another StructureDefinition (its rules are its own)


@dataclass(frozen=True)
class Rule:
    """One checkable statement of a StructureDefinition's differential."""

    id: str  # "<element id>|<kind>", or the constraint key
    element: str  # element id, e.g. "Consent.extension:decisionBasis"
    kind: RuleKind
    steps: tuple[tuple[str, str | None], ...]  # (element name, slice name) below the root
    severity: Severity
    value: Any  # the bound, fixed/pattern value, codes, allowed types, compiled FHIRPath or extension URL
    text: str  # what the rule says, for diagnostics
    member: Callable[[Any], bool] | None = None  # slice membership of the last step's items
    slice_url: str | None = None  # the url identifying the slice's items, when it is an extension slice

    def describe(self) -> str:
        return f"{self.id}: {self.text}"


def _steps(element_id: str) -> tuple[tuple[str, str | None], ...]:
    parts = element_id.split(".")[1:]
    return tuple((p.split(":", 1)[0], p.split(":", 1)[1] if ":" in p else None) for p in parts)


def _prefixed(element: dict[str, Any], prefix: str) -> tuple[str, Any] | None:
    return next(((k, v) for k, v in element.items() if k.startswith(prefix) and k[len(prefix) :][:1].isupper()), None)


def matches_pattern(value: Any, pattern: Any) -> bool:
    """FHIR pattern semantics: every property the pattern has, the value has too (lists: each pattern item somewhere)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(matches_pattern(value.get(k), p) for k, p in pattern.items())
    if isinstance(pattern, list):
        items = value if isinstance(value, list) else []
        return all(any(matches_pattern(v, p) for v in items) for p in pattern)
    return value == pattern


def _slice_url(slice_el: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> str | None:
    """The url an extension slice's items carry: the extension's profile, or the slice's fixed ``url`` child."""
    profiles = [p for t in slice_el.get("type", []) if t["code"] == "Extension" for p in t.get("profile", [])]
    return profiles[0] if profiles else by_id.get(f"{slice_el['id']}.url", {}).get("fixedUri")


def _slice_member(slice_el: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> Callable[[Any], bool]:
    """How an item is recognised as belonging to a slice: by its url (extensions), the slice's pattern, or its
    resource type (a type slice of ``contained``)."""
    url = _slice_url(slice_el, by_id)
    if url:
        return lambda item: isinstance(item, dict) and item.get("url") == url
    pattern = _prefixed(slice_el, "pattern")
    if pattern:
        return lambda item: matches_pattern(item, pattern[1])
    resource_types = {t["code"] for t in slice_el.get("type", []) if t["code"][:1].isupper() and t["code"] != "Extension"}
    if resource_types:
        return lambda item: isinstance(item, dict) and item.get("resourceType") in resource_types
    raise ValueError(f"slice {slice_el['id']} has no discriminator the validator understands")


def _slice_label(slice_el: dict[str, Any]) -> str:
    profiles = [p for t in slice_el.get("type", []) for p in t.get("profile", [])]
    return f"slice '{slice_el['sliceName']}'" + (f" ({profiles[0]})" if profiles else "")


def _element_rules(el: dict[str, Any], by_id: dict[str, dict[str, Any]], elements: list[dict[str, Any]], model: Any) -> Iterator[Rule]:
    eid = el["id"]
    steps = _steps(eid)
    member = _slice_member(el, by_id) if "sliceName" in el else None
    url = _slice_url(el, by_id) if member else None
    label = _slice_label(el) if member else eid
    if steps and el.get("min", 0) > 0:
        yield Rule(f"{eid}|min", eid, "min", steps, "error", el["min"], f"{label} requires at least {el['min']}", member, url)
    if steps and el.get("max", "*") != "*":
        yield Rule(f"{eid}|max", eid, "max", steps, "error", int(el["max"]), f"{label} allows at most {el['max']}", member, url)
    fixed = _prefixed(el, "fixed")
    if fixed:
        yield Rule(f"{eid}|fixed", eid, "fixed", steps, "error", fixed[1], f"{eid} is fixed to {json.dumps(fixed[1])}")
    pattern = _prefixed(el, "pattern")
    if pattern and member is None:
        yield Rule(f"{eid}|pattern", eid, "pattern", steps, "error", pattern[1], f"{eid} must match {json.dumps(pattern[1])}")
    binding = el.get("binding", {})
    if binding.get("strength") == "required" and expansion(binding.get("valueSet", "")) is not None:
        yield Rule(
            f"{eid}|binding",
            eid,
            "binding",
            steps,
            "error",
            expansion(binding["valueSet"]),
            f"{eid} must come from {binding['valueSet']} (required binding)",
        )
    types = el.get("type", [])
    if eid.endswith("[x]") and types:
        yield Rule(
            f"{eid}|type", eid, "type", steps, "error", tuple(t["code"] for t in types), f"{eid} must be {' or '.join(t['code'] for t in types)}"
        )
    targets = tuple(p.rsplit("/", 1)[-1] for t in types if t["code"] == "Reference" for p in t.get("targetProfile", []))
    if targets:
        yield Rule(f"{eid}|target", eid, "target", steps, "error", targets, f"{eid} must reference a {' or '.join(targets)}")
    for t in types:
        for profile in t.get("profile", []):
            kind: RuleKind = "extension" if t["code"] == "Extension" else "profile"
            yield Rule(f"{eid}|{kind}", eid, kind, steps, "error", profile, f"conforms to {profile}", member)
    if el.get("slicing", {}).get("rules") == "closed":
        slices = [e for e in elements if e.get("path") == el["path"] and "sliceName" in e and e["id"].startswith(eid + ":")]
        matchers = tuple(_slice_member(s, by_id) for s in slices)
        yield Rule(f"{eid}|closed", eid, "closed", steps, "error", matchers, f"{eid} is closed to slices {', '.join(s['sliceName'] for s in slices)}")
    for c in el.get("constraint", []):
        if c.get("expression"):
            compiled = fhirpathpy.compile(c["expression"], model)
            yield Rule(c["key"], eid, "constraint", steps, c.get("severity", "error"), compiled, c["human"])


@dataclass(frozen=True)
class Compiled:
    """A StructureDefinition ready to apply: its rules, and how to recognise each slice's items."""

    rules: tuple[Rule, ...]
    members: dict[str, Callable[[Any], bool]]  # slice path ("extension:assessor") -> membership test
    repeats: dict[str, str]  # path of a content-referenced element ("provision") -> the child that repeats it


@lru_cache(maxsize=16)
def compiled(url: str) -> Compiled:
    """One StructureDefinition's differential, compiled once (FHIRPath included)."""
    sd = artefacts().structure_definitions[url]
    elements = sd["differential"]["element"]
    by_id = {e["id"]: e for e in elements}
    members = {_step_key(_steps(e["id"])): _slice_member(e, by_id) for e in elements if "sliceName" in e}
    model = fhirpath_models[sd_version(sd)]
    repeats = {
        target.removeprefix(f"{sd['type']}."): referring.rsplit(".", 1)[1]
        for referring, target in CONTENT_REFERENCES.items()
        if target.startswith(f"{sd['type']}.")
    }
    return Compiled(tuple(rule for el in elements for rule in _element_rules(el, by_id, elements, model)), members, repeats)


def sd_version(sd: dict[str, Any]) -> Version:
    """The FHIR version a StructureDefinition constrains (its FHIRPath is evaluated with that version's model)."""
    return "r5" if str(sd.get("fhirVersion", "")).startswith("5.") else "r4"


def profile_rules(url: str) -> tuple[Rule, ...]:
    """Every rule of one StructureDefinition's differential."""
    return compiled(url).rules


# --------------------------------------------------------------------------- applying rules


@dataclass(frozen=True)
class Scope:
    """Where rules are applied: a node (the Consent or one of its extensions), its location, and the Consent itself."""

    node: Any
    location: str
    resource: dict[str, Any]


def _children(parent: Any, location: str, name: str, member: Callable[[Any], bool] | None) -> list[tuple[Any, str]]:
    if not isinstance(parent, dict):
        return []
    if name.endswith("[x]"):
        prefix = name[:-3]
        return [(v, f"{location}.{k}") for k, v in parent.items() if k.startswith(prefix) and k[len(prefix) :][:1].isupper()]
    value = parent.get(name)
    if value is None:
        return []
    items = [(v, f"{location}.{name}[{i}]") for i, v in enumerate(value)] if isinstance(value, list) else [(value, f"{location}.{name}")]
    return [(v, where) for v, where in items if v is not None and (member is None or member(v))]


def _select(scope: Scope, steps: tuple[tuple[str, str | None], ...], profile: Compiled) -> list[tuple[Any, str]]:
    nodes = [(scope.node, scope.location)]
    for depth, (name, slice_name) in enumerate(steps):
        key = _step_key(steps[: depth + 1])
        member = profile.members.get(key) if slice_name else None
        nodes = [child for node, where in nodes for child in _children(node, where, name, member)]
        if key in profile.repeats:
            nodes = _with_nested(nodes, profile.repeats[key])
    return nodes


def _with_nested(nodes: list[tuple[Any, str]], name: str) -> list[tuple[Any, str]]:
    """The nodes and, depth first, every node nested under them through ``name`` (the document's depth is bounded)."""
    out: list[tuple[Any, str]] = []
    stack = list(reversed(nodes))
    while stack:
        node, where = stack.pop()
        out.append((node, where))
        stack.extend(reversed(_children(node, where, name, None)))
    return out


def _step_key(steps: tuple[tuple[str, str | None], ...]) -> str:
    return ".".join(f"{n}:{s}" if s else n for n, s in steps)


def _cardinality_location(where: str, name: str, rule: Rule) -> str:
    """FHIRPath of a counted element: ``extension('url')`` for an extension slice, else the element."""
    if rule.slice_url and name == "extension":
        return f"{where}.extension('{rule.slice_url}')"
    return f"{where}.{name[:-3] if name.endswith('[x]') else name}"


def _reference_type(reference: Any, resource: dict[str, Any]) -> tuple[str | None, str | None]:
    """(resource type, problem) for a literal reference; (None, None) when there is nothing to check."""
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(ref, str):
        return None, None
    if ref.startswith("#"):
        found = next((c for c in resource.get("contained") or [] if isinstance(c, dict) and c.get("id") == ref[1:]), None)
        return (found.get("resourceType"), None) if found else (None, f"'{ref}' does not resolve to a contained resource")
    parts = ref.split("/")
    return (parts[-2], None) if len(parts) >= 2 else (None, f"'{ref}' is not a resolvable reference")


def _in_codes(value: Any, allowed: frozenset[tuple[str, str]]) -> bool:
    if isinstance(value, str):
        return value in {code for _, code in allowed}
    if isinstance(value, dict) and "coding" in value:
        return any(isinstance(c, dict) and (c.get("system"), c.get("code")) in allowed for c in value.get("coding") or [])
    return isinstance(value, dict) and (value.get("system"), value.get("code")) in allowed


def _apply(rule: Rule, scope: Scope, profile: Compiled) -> list[Issue]:
    steps = rule.steps
    if rule.kind == "constraint":
        return [issue for node, where in _select(scope, steps, profile) for issue in _constraint_issues(rule, node, where, scope)]
    if rule.kind in ("min", "max", "closed"):
        name = steps[-1][0]
        issues = []
        for parent, where in _select(scope, steps[:-1], profile):
            if not isinstance(parent, dict):
                continue
            items = _children(parent, where, name, rule.member)
            if rule.kind == "min" and len(items) < rule.value:
                issues.append(error("required", _cardinality_location(where, name, rule), f"{rule.describe()}, found {len(items)}"))
            elif rule.kind == "max" and len(items) > rule.value:
                issues.append(error("structure", _cardinality_location(where, name, rule), f"{rule.describe()}, found {len(items)}"))
            elif rule.kind == "closed":
                issues += [
                    error("structure", at, f"{rule.describe()}; this item matches none of them")
                    for item, at in items
                    if not any(m(item) for m in rule.value)
                ]
        return issues
    return [issue for node, where in _select(scope, steps, profile) for issue in _value_issues(rule, node, where, scope)]


def _choice_type(where: str, choice_name: str) -> str:
    """The type part of a choice element's JSON name: ("….valueReference", "value[x]") -> "Reference"."""
    return where.rsplit(".", 1)[-1].removeprefix(choice_name.removesuffix("[x]"))


def _value_issues(rule: Rule, node: Any, where: str, scope: Scope) -> list[Issue]:
    if rule.kind == "fixed" and node != rule.value:
        return [error("value", where, rule.describe())]
    if rule.kind == "pattern" and not matches_pattern(node, rule.value):
        return [error("value", where, rule.describe())]
    if rule.kind == "binding" and not _in_codes(node, rule.value):
        return [error("code-invalid", where, rule.describe())]
    if rule.kind == "type":
        suffix = _choice_type(where, rule.steps[-1][0])
        if suffix.lower() not in {t.lower() for t in rule.value}:
            return [error("structure", where, f"{rule.describe()}, found {suffix}")]
    if rule.kind == "target":
        found, problem = _reference_type(node, scope.resource)
        if problem:
            return [error("value", where, f"{rule.describe()}: {problem}")]
        if found is not None and found not in rule.value:
            return [error("value", where, f"{rule.describe()}, found {found}")]
    if rule.kind in NESTED_KINDS and rule.value in artefacts().structure_definitions:
        expected_type = artefacts().structure_definitions[rule.value]["type"]
        if rule.kind == "profile" and (not isinstance(node, dict) or node.get("resourceType") != expected_type):
            return []
        return conformance_issues(Scope(node, where, scope.resource), rule.value)
    return []


def _constraint_issues(rule: Rule, node: Any, where: str, scope: Scope) -> list[Issue]:
    """A constraint fails when its expression is false; empty (nothing to test) passes, as in FHIR."""
    try:
        result = rule.value(node, {"resource": scope.resource})
    except Exception as exc:  # fhirpathpy raises many types on odd input; a validator must report, not crash
        log.warning("constraint %s could not be evaluated (%s)", rule.id, type(exc).__name__)
        return [Issue("warning", "processing", where, f"{rule.id} could not be evaluated on this content ({type(exc).__name__})")]
    return [Issue(rule.severity, "invariant", where, rule.describe())] if result == [False] else []


def conformance_issues(scope: Scope, url: str) -> list[Issue]:
    """Every rule of the StructureDefinition ``url`` applied to ``scope.node`` (data-driven from the JSON)."""
    profile = compiled(url)
    return [issue for rule in profile.rules for issue in _apply(rule, scope, profile)]


# --------------------------------------------------------------------------- code rules (what FHIRPath cannot do)


def _nhs_identifiers(resource: dict[str, Any]) -> Iterator[tuple[Any, str]]:
    for element in ("patient", "subject"):  # R4 patient, R5 subject
        reference = resource.get(element)
        ident = reference.get("identifier") if isinstance(reference, dict) else None
        if isinstance(ident, dict) and ident.get("system") == codes.NHS_NUMBER:
            yield ident.get("value"), f"Consent.{element}.identifier.value"
    for n, res in enumerate(resource.get("contained") or []):
        if isinstance(res, dict) and res.get("resourceType") == "Patient":
            for m, i in enumerate(res.get("identifier") or []):
                if isinstance(i, dict) and i.get("system") == codes.NHS_NUMBER:
                    yield i.get("value"), f"Consent.contained[{n}].identifier[{m}].value"


def nhs_number_issues(resource: dict[str, Any]) -> list[Issue]:
    """casus-6 in code: every NHS number the Consent carries passes the Modulus 11 check digit."""
    return [
        error("value", where, "casus-6: the NHS number fails the Modulus 11 check digit")
        for value, where in _nhs_identifiers(resource)
        if not nhs_number.is_valid(value)
    ]


CODE_RULES: dict[str, Callable[[dict[str, Any]], list[Issue]]] = {"casus-6|modulus-11": nhs_number_issues}


def rule_ids(url: str = codes.PROFILE_CONSENT) -> list[str]:
    """The id of every rule the validator enforces for a profile: its differential's, then its code rules."""
    ids = [r.id for r in profile_rules(url) if r.kind not in NESTED_KINDS]
    if url in CONSENT_PROFILES.values():
        ids += list(CODE_RULES)
    return ids


# --------------------------------------------------------------------------- mapping stage


R4_FORM_PATHS = (
    ("$.youngPerson.nhsNumber", "Consent.patient.identifier.value"),
    ("$.youngPerson", "Consent.contained.where(id = 'young-person')"),
    ("$.recorded.date", "Consent.dateTime"),
    ("$.recorded", f"Consent.extension('{codes.EXT_RECORDED_BY}')"),
    ("$.decisionMaker.competence", f"Consent.extension('{codes.EXT_COMPETENCE}')"),
    ("$.decisionMaker.personId", "Consent.performer"),
    ("$.decisionMaker", f"Consent.extension('{codes.EXT_DECISION_BASIS}')"),
    ("$.people", "Consent.provision.provision.where(actor.exists())"),  # people have an actor, exceptions none
    ("$.exceptions.provisions", "Consent.provision.provision.where(actor.empty())"),
    ("$.exceptions", f"Consent.extension('{codes.EXT_EXCEPTIONS_EXPLAINED}')"),
    ("$.status", "Consent.status"),
    ("$.formId", "Consent.identifier"),
)
# R5 writes no provision for a do-not-share person, so a form person is found by their contained resource
# (contained in form order), not by provision position.
R5_PEOPLE = "Consent.contained.where($this is RelatedPerson or $this is PractitionerRole)"
R5_FORM_PATHS = tuple(
    (
        form_path,
        R5_PEOPLE
        if form_path == "$.people"
        else fhir_path.replace("Consent.patient", "Consent.subject")
        .replace("Consent.dateTime", "Consent.date")
        .replace("Consent.performer", "Consent.grantor")
        .replace("Consent.provision.provision", "Consent.provision"),
    )
    for form_path, fhir_path in R4_FORM_PATHS
)


def form_path_to_fhirpath(path: str, version: Version) -> str:
    """Where a CASUS form rule (a JSON path from form.cross_field_issues) lives in the Consent."""
    for form_path, fhir_path in R4_FORM_PATHS if version == "r4" else R5_FORM_PATHS:
        if path == form_path or path.startswith((form_path + ".", form_path + "[")):
            rest = path[len(form_path) :]
            index, _, _ = rest.lstrip("[").partition("]") if rest.startswith("[") else ("", "", "")
            return f"{fhir_path}[{index}]" if index.isdigit() else fhir_path
    return "Consent"


def _mapper(version: Version) -> Callable[[Any], Any] | None:
    try:
        module = importlib.import_module(f".mappings.{version}", __package__)
    except ImportError:
        return None
    return getattr(module, f"{version}_to_form", None)


def mapping_issues(document: dict[str, Any], version: Version) -> list[Issue]:
    """Why the Consent cannot be read as a CASUS form (empty when it can); form JSON paths become FHIRPath."""
    to_form = _mapper(version)
    if to_form is None:
        return [Issue("information", "not-supported", "Consent", f"the CASUS {version.upper()} mapping is not installed; form mapping not checked")]
    try:
        to_form(document)
    except InvalidInput as exc:
        return [_as_fhirpath(i, version) for i in exc.issues if not _is_headline(i)]
    except Exception as exc:  # the mapping must not take the validator down with it
        log.warning("the %s mapping failed on a resource (%s)", version, type(exc).__name__)
        return [error("exception", "Consent", f"the CASUS {version.upper()} mapping could not read this resource ({type(exc).__name__})")]
    return []


def _is_headline(issue: Issue) -> bool:
    return issue.diagnostics.startswith(NOT_CASUS)


def _as_fhirpath(issue: Issue, version: Version) -> Issue:
    if not issue.expression.startswith("$"):
        return issue
    return Issue(
        issue.severity, issue.code, form_path_to_fhirpath(issue.expression, version), f"as a CASUS form ({issue.expression}): {issue.diagnostics}"
    )


# --------------------------------------------------------------------------- decision basis


DECISION_BASIS_AT = f"Consent.extension('{codes.EXT_DECISION_BASIS}')"
NO_DECISION_BASIS = (
    "this Consent records no CASUS decision basis (extension casus-decision-basis: aged-16-17, "
    "competent-under-16 or parental-responsibility), so who may decide, and whether the grantor did, "
    "cannot be checked"
)


# Form-mapping findings that judge the grantor against the decision basis: without a CASUS basis they would judge it
# against a basis the Consent does not have, so they are left to the one NO_DECISION_BASIS issue.
def _decision_basis(document: dict[str, Any]) -> str | None:
    """The CASUS decision basis the Consent records (None when it records none, or a code that is not one)."""
    found = [e for e in document.get("extension") or [] if isinstance(e, dict) and e.get("url") == codes.EXT_DECISION_BASIS]
    coding = found[0].get("valueCoding") if len(found) == 1 else None
    return codes.DECISION_BASIS.from_coding(coding) if isinstance(coding, dict) else None


def decision_basis_issues(document: dict[str, Any]) -> list[Issue]:
    """A Consent without a decision basis is told exactly that, once (other stages' findings at that place defer to it)."""
    if any(isinstance(e, dict) and e.get("url") == codes.EXT_DECISION_BASIS for e in document.get("extension") or []):
        return []
    return [error("required", DECISION_BASIS_AT, NO_DECISION_BASIS)]


# --------------------------------------------------------------------------- issues about absent elements


def _steps_of(expression: str) -> list[str]:
    """Top-level FHIRPath steps ("Consent.extension('a.b')[0].x" -> ["Consent", "extension('a.b')[0]", "x"])."""
    steps, depth, quoted, current = [], 0, False, ""
    for ch in expression:
        quoted = not quoted if ch == "'" else quoted
        depth += (ch == "(") - (ch == ")") if not quoted else 0
        if ch == "." and depth == 0 and not quoted:
            steps.append(current)
            current = ""
        else:
            current += ch
    return [*steps, current]


def _prefixes(expression: str) -> list[str]:
    """Every ancestor of an element, nearest the root first, ending with the element (an index is its own level)."""
    out, path = [], ""
    for step in _steps_of(expression):
        path = f"{path}.{step}" if path else step
        if step.endswith("]") and "[" in step:
            out.append(path[: path.rindex("[")])
        out.append(path)
    return out


@lru_cache(maxsize=512)
def _location_program(expression: str, version: Version) -> Callable[..., Any]:
    return fhirpathpy.compile(expression, fhirpath_models[version])


def _present(document: dict[str, Any], expression: str, version: Version) -> bool | None:
    """Whether the element an issue names is in the document (None: the location is not FHIRPath we can evaluate)."""
    try:
        return bool(_location_program(expression, version)(document, {"resource": document}))
    except Exception:  # an issue location fhirpathpy cannot parse is left as it is
        return None


def _about_present_elements(issues: list[Issue], document: dict[str, Any], version: Version) -> list[Issue]:
    """Every issue names an element that is there, or is a missing-element issue whose parent is there.

    A finding about an absent element (a rule that would judge it if it were there) becomes one "missing" issue at
    the first absent ancestor, unless another issue already says that element is missing.
    """

    def first_absent(expression: str) -> str | None:
        for prefix in _prefixes(expression)[1:]:
            if _present(document, prefix, version) is False:
                return prefix
        return None

    absent = {i.expression: first_absent(i.expression) for i in issues if i.expression and i.expression != "Consent"}
    told = {i.expression for i in issues if i.code == "required" and absent.get(i.expression) == i.expression}
    out: list[Issue] = []
    for issue in issues:
        missing = absent.get(issue.expression)
        if missing is None or (issue.code == "required" and missing == issue.expression):
            out.append(issue)
        elif missing not in told:
            told.add(missing)
            out.append(Issue(issue.severity, "required", missing, f"missing required element: {issue.diagnostics}"))
    return out


# --------------------------------------------------------------------------- the public entry points


def _too_deep(value: Any) -> bool:
    """Bounded, iterative nesting check (recursive walkers further on must never meet a RecursionError)."""
    stack = [(value, 0)]
    while stack:
        node, level = stack.pop()
        if level > MAX_DEPTH:
            return True
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, level + 1) for child in children)
    return False


def _claims(document: dict[str, Any], url: str) -> bool:
    meta = document.get("meta")
    profiles = meta.get("profile") if isinstance(meta, dict) else None
    return isinstance(profiles, list) and url in profiles


def _reads_as_mapping_version_1(document: dict[str, Any]) -> bool:
    """An R4 Consent in the version 1 shape that the mapping reads without complaint (Consents already on servers)."""
    root = document.get("provision")
    return isinstance(root, dict) and "type" in root and not mapping_issues(document, "r4")


def _ppc_1(document: dict[str, Any]) -> list[Issue]:
    """R4 ppc-1 (policy or policyRule), a base invariant fhir.resources does not check."""
    if fhirpathpy.evaluate(document, PPC_1, {"resource": document}, fhirpath_models["r4"]) == [False]:
        return [error("invariant", "Consent", "ppc-1: either a policy or a policyRule is required")]
    return []


def base_fhir_issues(document: Any, version: Version) -> list[Issue]:
    """Stage a: base FHIR structure, plus ppc-1 for R4 (the one base Consent invariant fhir.resources skips)."""
    issues = base_issues(document, version)
    if version == "r4" and isinstance(document, dict) and document.get("resourceType") == "Consent":
        issues += _ppc_1(document)
    return issues


def _stage(name: str, run: Callable[[], list[Issue]]) -> list[Issue]:
    try:
        return run()
    except Exception as exc:  # report and stop this stage: bad input must produce issues, never a traceback
        log.warning("validation stage %s failed (%s)", name, type(exc).__name__)
        return [Issue("fatal", "exception", "Consent", f"{name} could not be completed on this content ({type(exc).__name__})")]


def _dedupe(stages: Iterable[list[Issue]]) -> list[Issue]:
    """Drop exact repeats, and later-stage issues an earlier stage already made at the same place with the same code."""
    out: list[Issue] = []
    seen_exact: set[Issue] = set()
    earlier: set[tuple[str, str, str]] = set()
    for issues in stages:
        this_stage: set[tuple[str, str, str]] = set()
        for issue in issues:
            key = (issue.severity, issue.code, issue.expression)
            if issue in seen_exact or key in earlier:
                continue
            seen_exact.add(issue)
            this_stage.add(key)
            out.append(issue)
        earlier |= this_stage
    return out


def _headline(issues: list[Issue], reasons_prefix: list[str]) -> Issue:
    reasons = reasons_prefix + [f"{i.expression or 'document'}: {i.diagnostics}" for i in issues if i.severity in ("fatal", "error")]
    shown = "; ".join(reasons[:HEADLINE_REASONS])
    more = f"; and {len(reasons) - HEADLINE_REASONS} more" if len(reasons) > HEADLINE_REASONS else ""
    return error("processing", "Consent", f"{NOT_CASUS}: {shown}{more}")


def _profile_to_apply(document: dict[str, Any], version: Version, asked: str | None) -> tuple[str | None, list[Issue]]:
    """The StructureDefinition to check ``document`` against (None: none claimed or asked for), and notes about it.

    A Consent claiming the CASUS profile of the other FHIR version is checked against its own version's profile,
    with a warning: the published profiles are per version and a mislabelled claim would otherwise go unchecked.
    """
    other_version: Version = "r5" if version == "r4" else "r4"
    own = CONSENT_PROFILES[version]
    other = CONSENT_PROFILES[other_version]
    if asked is None and _claims(document, own):
        return own, []
    if asked is None and _claims(document, other):
        return own, [
            Issue(
                "warning",
                "value",
                "Consent.meta.profile",
                f"claims {other}, the CASUS profile for FHIR {other_version.upper()}; this {version.upper()} Consent is checked against {own}",
            )
        ]
    if asked is None:
        return None, []
    known = artefacts().structure_definitions
    if asked not in known:
        return None, [error("not-supported", "Consent.meta.profile", f"unknown profile {asked}; known: {', '.join(sorted(known))}")]
    if known[asked]["type"] != "Consent" or sd_version(known[asked]) != version:
        return None, [error("not-supported", "Consent.meta.profile", f"{asked} does not describe a FHIR {version.upper()} Consent")]
    return asked, []


def validate_consent(document: Any, version: Version = "r4", profile: str | None = None) -> list[Issue]:
    """Every issue with ``document`` as a CASUS Consent in FHIR ``version``; an empty list means valid.

    The CASUS profile of ``version`` (R4 ``casus-consent``, R5 ``casus-consent-r5``) is applied when the
    resource claims it; ``profile`` asks for a profile check even when the resource does not claim it.
    Never raises for bad input.
    """
    if version not in ("r4", "r5"):
        raise ValueError(f"unknown FHIR version {version!r}")
    if _too_deep(document):
        return [error("structure", "", f"JSON nested deeper than {MAX_DEPTH} levels")]
    base = _stage("base FHIR check", lambda: base_fhir_issues(document, version))
    if not isinstance(document, dict) or document.get("resourceType") != "Consent":
        return base
    profile_stage: list[Issue] = []
    code_stage: list[Issue] = []
    url, notes = _profile_to_apply(document, version, profile)
    if url is not None and version == "r4" and _reads_as_mapping_version_1(document):
        url = None
        notes.append(
            Issue(
                "information",
                "informational",
                "Consent.provision",
                "written by CASUS mapping version 1 (root provision type deny, per-type permits nested); the "
                "CASUS mapping still reads that shape, the profile describes version 2 and is not applied",
            )
        )
    if url is not None:
        profile_stage = _stage("CASUS profile check", lambda: conformance_issues(Scope(document, "Consent", document), url))
        code_stage = _stage("CASUS code rules", lambda: [i for rule in CODE_RULES.values() for i in rule(document)])
    basis = _stage("CASUS decision basis", lambda: decision_basis_issues(document))
    mapping = _stage("CASUS form mapping", lambda: mapping_issues(document, version))
    issues = _about_present_elements(_dedupe([base, notes, profile_stage, code_stage, basis, mapping]), document, version)
    if any(i.severity in ("fatal", "error") for i in issues):
        unclaimed = [] if url else [f"Consent.meta.profile: does not claim {CONSENT_PROFILES[version]}"]
        issues.insert(0, _headline(issues, unclaimed))
    log.info("validated a %s Consent: %d issue(s)", version, len(issues))
    return issues


def validate_text(text: str | bytes, version: Version = "r4", profile: str | None = None) -> list[Issue]:
    """``validate_consent`` for raw JSON text or bytes (size, UTF-8, syntax and depth are checked first)."""
    document, issues = load_json(text)
    if issues:
        return issues
    return validate_consent(document, version, profile)
