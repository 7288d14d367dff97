"""The shared corpus of real-world Consents: validated without crashing, base verdicts as SOURCES.md records,
every one recognised as not a CASUS consent, and every issue true of the Consent at hand (it names an element
that is there, in plain words)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import fhirpathpy
import pytest
from click.testing import CliRunner
from fhirpathpy.models import models as fhirpath_models

from fhir_adapter.cli import main
from fhir_adapter.outcome import Issue, operation_outcome
from fhir_adapter.validation import DECISION_BASIS_AT, NO_DECISION_BASIS, base_fhir_issues, validate_consent

from .conftest import CORPUS

NONE_FOUND = "none found"
MISSING = re.compile(r"^Consent: missing required element (\w+)")
INVARIANT = re.compile(r"^Consent: invariant (\S+) violated")
FINDING_SEPARATOR = re.compile(r"; (?=Consent)")  # findings start with their element; messages may hold "; " too


@dataclass(frozen=True)
class Entry:
    """One row of SOURCES.md's file table."""

    file: str  # e.g. "r4/leap-cds-consent-boris-optin.json"
    base_issues: str  # the "base-spec issues" column

    @property
    def version(self) -> str:
        return self.file.split("/", 1)[0]

    def findings(self) -> list[str]:
        return [] if self.base_issues == NONE_FOUND else FINDING_SEPARATOR.split(self.base_issues)

    def named_elements(self) -> list[str]:
        """The FHIRPath of each element the SOURCES checker named (one per ';'-separated finding)."""
        out = []
        for finding in self.findings():
            if MISSING.match(finding):
                out.append(f"Consent.{MISSING.match(finding).group(1)}")
            elif INVARIANT.match(finding):
                out.append("Consent")
            elif ":" in finding and finding.startswith("Consent"):
                out.append(finding.split(":", 1)[0])
        return out


def sources_table(sources: Path) -> list[Entry]:
    """Rows of the Markdown table whose first cell is a corpus file; the last cell is the base-spec verdict."""
    entries = []
    for line in sources.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and re.match(r"^r[45]/.+\.json$", cells[0]):
            entries.append(Entry(cells[0], cells[6]))
    return entries


ENTRIES = sources_table(CORPUS / "SOURCES.md") if (CORPUS / "SOURCES.md").is_file() else []


def _load(corpus_dir: Path, entry: Entry) -> object:
    return json.loads((corpus_dir / entry.file).read_text(encoding="utf-8"))


def _errors(issues: list[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity in ("error", "fatal")]


def test_sources_table_lists_every_corpus_file(corpus_dir):
    listed = {e.file for e in sources_table(corpus_dir / "SOURCES.md")}
    on_disk = {str(p.relative_to(corpus_dir)) for p in corpus_dir.glob("r[45]/*.json")}
    assert listed == on_disk
    assert len(listed) == 61


def test_sources_table_names_an_element_for_every_reported_finding(corpus_dir):
    for entry in sources_table(corpus_dir / "SOURCES.md"):
        if entry.base_issues != NONE_FOUND:
            assert len(entry.named_elements()) == len(entry.findings()), entry.file


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.file)
def test_corpus_file_validates_without_crashing(corpus_dir, entry):
    issues = validate_consent(_load(corpus_dir, entry), entry.version)
    assert issues and all(isinstance(i, Issue) for i in issues)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.file)
def test_base_fhir_verdict_matches_sources(corpus_dir, entry):
    """Base-structure errors exactly where the SOURCES checker found them.

    fhir.resources does not check invariants, so the R4 ppc-1 finding (leap multiple-deny-labels) is
    caught by validation's own ppc-1 check, which base_fhir_issues includes; every other finding in
    SOURCES.md is detected by fhir.resources itself, so no gap is left open here.
    """
    errors = _errors(base_fhir_issues(_load(corpus_dir, entry), entry.version))
    expected = entry.named_elements()
    if not expected:
        assert errors == []
    for element in expected:
        assert any(i.expression == element for i in errors), f"no base error at {element}: {[i.expression for i in errors]}"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.file)
def test_corpus_file_is_reported_as_not_a_casus_consent(corpus_dir, entry):
    issues = validate_consent(_load(corpus_dir, entry), entry.version)
    headline = [i for i in _errors(issues) if i.diagnostics.startswith("not a CASUS consent")]
    assert len(headline) == 1
    assert headline[0].expression


# --------------------------------------------------------------------------- issue texts and locations are true

LIBRARY_WORDING = (
    "Input should be",
    "Value error",
    "pydantic",
    "spec regex",
    "Field required",
    "Extra inputs",
    "String should match",
    "validation error",
    "errors.pydantic.dev",
)


def _top_level_steps(expression: str) -> list[str]:
    steps, depth, quoted, current = [], 0, False, ""
    for ch in expression:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch in "()":
            depth += 1 if ch == "(" else -1
        if ch == "." and depth == 0 and not quoted:
            steps.append(current)
            current = ""
        else:
            current += ch
    return [*steps, current]


STEP = re.compile(r"^(?P<name>\w+)(?:\((?P<args>.*)\))?(?:\[(?P<index>\d+)\])?$")


def _resolve(document: object, expression: str) -> list[object]:
    """The nodes a location names, walked over the JSON itself (names, [n], extension('url'), where(...))."""
    steps = _top_level_steps(expression)
    if steps[0] != "Consent":
        return []
    nodes: list[object] = [document]
    for step in steps[1:]:
        match = STEP.match(step)
        assert match, f"location step {step!r} of {expression!r} is not an element, an index or a filter"
        name, args, index = match["name"], match["args"], match["index"]
        if name == "where":
            nodes = [n for n in nodes if fhirpathpy.evaluate(n, args, {"resource": document}, fhirpath_models["r4"]) == [True]]
        else:
            found: list[object] = []
            for node in nodes:
                value = node.get(name) if isinstance(node, dict) else None
                found += value if isinstance(value, list) else [] if value is None else [value]
            if name == "extension" and args is not None:
                found = [e for e in found if isinstance(e, dict) and e.get("url") == args.strip("'")]
            nodes = found
        if index is not None:
            nodes = nodes[int(index) : int(index) + 1]
    return nodes


def _parent(expression: str) -> str:
    steps = _top_level_steps(expression)
    last = steps[-1]
    if last.endswith("]") and "[" in last:
        return ".".join([*steps[:-1], last[: last.rindex("[")]])
    return ".".join(steps[:-1])


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.file)
def test_every_issue_names_an_element_that_is_there_or_a_missing_one_whose_parent_is(corpus_dir, entry):
    document = _load(corpus_dir, entry)
    for issue in validate_consent(document, entry.version):
        if issue.expression in ("", "Consent"):
            continue
        if _resolve(document, issue.expression):
            continue
        assert issue.code == "required", f"{issue.expression} is not in the document: {issue.diagnostics}"
        assert _resolve(document, _parent(issue.expression)), f"neither {issue.expression} nor its parent is in the document"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.file)
def test_no_issue_text_is_library_wording(corpus_dir, entry):
    for issue in validate_consent(_load(corpus_dir, entry), entry.version):
        assert not any(w.lower() in issue.diagnostics.lower() for w in LIBRARY_WORDING), issue


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.file)
def test_consent_without_a_decision_basis_is_told_so_once_and_its_grantor_is_not_judged(corpus_dir, entry):
    issues = validate_consent(_load(corpus_dir, entry), entry.version)
    told = [i for i in issues if i.diagnostics == NO_DECISION_BASIS]
    assert [i.expression for i in told] == [DECISION_BASIS_AT]
    assert not [i for i in issues if "decides on this basis" in i.diagnostics or "parental-responsibility basis" in i.diagnostics]


# --------------------------------------------------------------------------- the command line over the corpus


def _cli(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, json.loads(result.stdout)


def test_validate_command_finds_every_corpus_file_invalid_with_the_outcome_of_its_own_fhir_version(corpus_dir):
    """One run over both folders: the FHIR version each file is read as is the one its folder says."""
    code, bundle = _cli("validate", "--format", "json", str(corpus_dir / "r4"), str(corpus_dir / "r5"))
    assert code == 1
    by_file = {entry["fullUrl"]: entry["resource"] for entry in bundle["entry"]}
    assert len(by_file) == len(ENTRIES) == 61
    for entry in ENTRIES:
        path = corpus_dir / entry.file
        expected = operation_outcome(validate_consent(_load(corpus_dir, entry), entry.version))
        assert by_file[path.resolve().as_uri()] == expected, entry.file


def _other_version(entry: Entry) -> str:
    return "r5" if entry.version == "r4" else "r4"


@pytest.mark.parametrize("target", ["form", "other FHIR version"])
@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.file)
def test_map_command_rejects_every_corpus_file_with_an_outcome_naming_each_element(corpus_dir, entry, target):
    """Valid FHIR gets the "not a CASUS consent" headline, then its reasons; FHIR that is not valid even as base
    FHIR (what SOURCES.md's checker found) gets its base problems alone, at the elements SOURCES.md names."""
    to = "form" if target == "form" else _other_version(entry)
    code, outcome = _cli("map", "--to", to, str(corpus_dir / entry.file))
    assert code == 1
    assert outcome["resourceType"] == "OperationOutcome"
    issues = outcome["issue"]
    assert all(i["severity"] == "error" and i.get("expression") and i.get("diagnostics") for i in issues)
    assert not any(w.lower() in i["diagnostics"].lower() for i in issues for w in LIBRARY_WORDING)
    if entry.findings():
        structural = set(entry.named_elements()) - {"Consent"}  # ppc-1 (at Consent) is judged by validate, not map
        assert {e for i in issues for e in i["expression"]} >= structural
        assert not any(i["diagnostics"].startswith("not a CASUS consent") for i in issues)
    else:
        headline, *reasons = issues
        assert headline["diagnostics"].startswith("not a CASUS consent: ") and reasons
