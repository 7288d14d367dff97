"""The committed FHIR packages of the CASUS profiles: current, well formed, reproducible, and valid to another tool.

The fast tests need no Node: they rebuild everything but the snapshots in Python and compare with the
committed packages.  The integration tests install the pinned Node tools into ``.cache/`` and rebuild
the packages byte for byte (snapshots included), then load the R4 package into Medplum's validator, and
the R4 and R5 packages into HAPI's (the HL7 validator's core, installed by Maven into ``.cache/``), and
check each example against its profile and each deliberately broken copy against the rule it breaks; for
broken CASUS invariants HAPI and the adapter's own validator must name the same ones at the same places.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fhir_adapter import fhir_package, validation
from fhir_adapter.cli import main
from fhir_adapter.fhir_package import RELEASES, Release
from fhir_adapter.form import parse_form
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.r5 import form_to_r5

R4 = next(r for r in RELEASES if r.key == "r4")
R5 = next(r for r in RELEASES if r.key == "r5")
REGENERATE = "stale: run `make package` (fhir-adapter profiles package) and commit profiles/package/"


def _version() -> str:
    return fhir_package.artefact_version(fhir_package.conformance_resources())


def _committed_tree(release: Release) -> dict[str, bytes]:
    return fhir_package.read_tree(fhir_package.OUTPUT_DIR / release.package_name)


def _committed_tgz(release: Release) -> Path:
    return fhir_package.OUTPUT_DIR / fhir_package.tgz_name(release, _version())


def _json_files(files: dict[str, bytes]) -> dict[str, Any]:
    return {name: json.loads(data) for name, data in files.items() if name.endswith(".json")}


# --------------------------------------------------------------------------- committed packages are current


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.package_name)
def test_committed_package_matches_the_profiles_apart_from_snapshots(release):
    committed = fhir_package.without_snapshots(_committed_tree(release))
    assert committed == fhir_package.package_files(release), REGENERATE


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.package_name)
def test_committed_tarball_is_the_committed_tree_packed(release):
    assert _committed_tgz(release).read_bytes() == fhir_package.tgz(_committed_tree(release)), REGENERATE


def test_output_folder_holds_only_the_current_packages():
    expected = {r.package_name for r in RELEASES} | {fhir_package.tgz_name(r, _version()) for r in RELEASES}
    assert {p.name for p in fhir_package.OUTPUT_DIR.iterdir()} == expected


# --------------------------------------------------------------------------- package shape


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.package_name)
def test_manifest_names_the_release_and_its_core_package(release):
    manifest = json.loads(_committed_tree(release)["package/package.json"])
    assert manifest["name"] == release.package_name
    assert manifest["fhirVersions"] == [release.fhir_version]
    assert manifest["dependencies"] == {release.core_package: release.fhir_version}
    assert manifest["version"] == _version()


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.package_name)
def test_every_structure_definition_carries_snapshot_and_differential(release):
    sds = [d for d in _json_files(_committed_tree(release)).values() if d.get("resourceType") == "StructureDefinition"]
    assert all(sd["snapshot"]["element"] and sd["differential"]["element"] for sd in sds)
    assert all(release.holds(sd["fhirVersion"]) for sd in sds)


def test_r4_package_holds_every_r4_structure_definition_in_profiles():
    in_profiles = {
        r["url"] for r in fhir_package.conformance_resources() if r["resourceType"] == "StructureDefinition" and R4.holds(r["fhirVersion"])
    }
    in_package = {d["url"] for d in _json_files(_committed_tree(R4)).values() if d.get("resourceType") == "StructureDefinition"}
    assert in_profiles and in_profiles <= in_package


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.package_name)
def test_index_lists_every_resource_file_with_its_identity(release):
    files = _json_files(_committed_tree(release))
    for folder in ("package/", "package/example/"):
        if folder + ".index.json" not in files:
            continue
        listed = {e["filename"]: e for e in files[folder + ".index.json"]["files"]}
        here = {
            n.removeprefix(folder): d for n, d in files.items() if n.startswith(folder) and "/" not in n.removeprefix(folder) and "resourceType" in d
        }
        assert listed.keys() == here.keys()
        for name, entry in listed.items():
            assert (entry["resourceType"], entry["id"], entry.get("url")) == (here[name]["resourceType"], here[name]["id"], here[name].get("url"))


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.package_name)
def test_every_resource_has_a_narrative(release):
    resources = [d for d in _json_files(_committed_tree(release)).values() if "resourceType" in d]
    for resource in resources:
        assert resource["text"]["status"] in ("generated", "extensions", "additional", "empty"), resource["id"]
        assert resource["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">'), resource["id"]


def test_generated_narrative_escapes_markup_and_is_kept_when_present():
    resource = {"resourceType": "ValueSet", "id": "x", "title": "<b>&", "status": "active"}
    assert "&lt;b&gt;&amp;" in fhir_package.with_narrative(resource)["text"]["div"]
    own = {**resource, "text": {"status": "additional", "div": '<div xmlns="http://www.w3.org/1999/xhtml">mine</div>'}}
    assert fhir_package.with_narrative(own) == own


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.package_name)
def test_implementation_guide_lists_every_resource_and_example(release):
    files = _json_files(_committed_tree(release))
    ig = files[f"package/ImplementationGuide-{release.package_name}.json"]
    listed = {e["reference"]["reference"] for e in ig["definition"]["resource"]}
    present = {f"{d['resourceType']}/{d['id']}" for n, d in files.items() if "resourceType" in d and d["resourceType"] != "ImplementationGuide"}
    assert listed == present
    assert (ig["packageId"], ig["fhirVersion"]) == (release.package_name, [release.fhir_version])


def test_examples_are_in_the_package_of_the_profile_they_claim():
    examples = {n: d for n, d in _json_files(_committed_tree(R4)).items() if n.startswith("package/example/Consent-")}
    assert len(examples) == len(list((fhir_package.PROFILES_DIR / "examples").glob("Consent-*.json")))
    assert all(fhir_package.CANONICAL in d["meta"]["profile"][0] for d in examples.values())


# --------------------------------------------------------------------------- how sources are sorted into packages


@pytest.fixture
def profiles_with_an_r5_profile(tmp_path) -> Path:
    """A copy of profiles/ plus an R5 profile that uses an R4 extension definition and an R5 example claiming it."""
    shutil.copytree(fhir_package.PROFILES_DIR, tmp_path / "profiles", ignore=shutil.ignore_patterns("package"))
    source = tmp_path / "profiles"
    r4 = json.loads((source / "StructureDefinition-casus-consent.json").read_text())
    r5 = {
        **r4,
        "id": "casus-consent-r5",
        "url": r4["url"] + "-r5",
        "fhirVersion": "5.0.0",
        "differential": {"element": [e for e in r4["differential"]["element"] if e["id"].startswith("Consent.extension")]},
    }
    (source / "StructureDefinition-casus-consent-r5.json").write_text(json.dumps(r5))
    example = {"resourceType": "Consent", "id": "casus-example-r5", "meta": {"profile": [r5["url"]]}, "status": "active"}
    (source / "examples" / "Consent-casus-example-r5.json").write_text(json.dumps(example))
    return source


def test_structure_definitions_go_to_the_package_of_their_fhir_version(profiles_with_an_r5_profile):
    r4 = fhir_package.package_files(R4, profiles_with_an_r5_profile)
    r5 = fhir_package.package_files(R5, profiles_with_an_r5_profile)
    assert "package/StructureDefinition-casus-consent-r5.json" in r5
    assert "package/StructureDefinition-casus-consent-r5.json" not in r4
    assert "package/StructureDefinition-casus-consent.json" not in r5


def test_an_extension_of_the_other_release_that_a_profile_uses_is_carried_with_the_package_release(profiles_with_an_r5_profile):
    r5 = _json_files(fhir_package.package_files(R5, profiles_with_an_r5_profile))
    borrowed = r5["package/StructureDefinition-casus-recorded-by.json"]
    assert borrowed["fhirVersion"] == "5.0.0"
    assert "package/StructureDefinition-casus-consent.json" not in r5


def test_an_example_goes_only_to_the_package_of_its_profile(profiles_with_an_r5_profile):
    r4 = fhir_package.package_files(R4, profiles_with_an_r5_profile)
    r5 = fhir_package.package_files(R5, profiles_with_an_r5_profile)
    assert "package/example/Consent-casus-example-r5.json" in r5
    assert "package/example/Consent-casus-example-r5.json" not in r4


def test_artefacts_with_different_versions_cannot_make_one_package(tmp_path):
    shutil.copytree(fhir_package.PROFILES_DIR, tmp_path / "profiles", ignore=shutil.ignore_patterns("package"))
    path = tmp_path / "profiles" / "ValueSet-casus-person-role.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": "9.9.9"}))
    with pytest.raises(fhir_package.PackageError, match="one version"):
        fhir_package.package_files(R4, tmp_path / "profiles")


# --------------------------------------------------------------------------- reproducible tarball


def test_tarball_is_reproducible_with_fixed_metadata():
    files = fhir_package.package_files(R4)
    first, second = fhir_package.tgz(files), fhir_package.tgz(files)
    assert first == second
    assert first[4:8] == b"\0\0\0\0"  # gzip header MTIME
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(first))) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(files)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(fhir_package.TAR_MTIME, 0, 0, "", "", 0o644)}


def test_package_command_without_the_node_tools_says_how_to_install_them(tmp_path):
    result = CliRunner().invoke(main, ["profiles", "package", "--out", str(tmp_path / "out"), "--tools", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "make package-tools" in result.output
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- Node: rebuild and Medplum's validator


@pytest.fixture(scope="module")
def node_tools() -> Path:
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("SKIPPED LOUDLY: Node.js/npm not on PATH; the FHIR package snapshots and Medplum's validator cannot run")
    fhir_package.install_tools()
    return fhir_package.TOOLS_DIR


@pytest.mark.integration
def test_rebuilt_packages_with_snapshots_are_byte_identical_to_the_committed_ones(node_tools, tmp_path):
    written = fhir_package.build_all(tmp_path, node_tools)
    for release, path in zip(RELEASES, written, strict=True):
        assert path.read_bytes() == _committed_tgz(release).read_bytes(), f"{release.package_name}: {REGENERATE}"


def _medplum(tools: Path, instances: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    request = json.dumps({"instances": [{"name": n, "resource": r} for n, r in instances.items()]})
    done = subprocess.run(
        ["node", str(fhir_package.TOOLS_SOURCE / "validate.mjs"), str(tools), str(_committed_tgz(R4))],
        input=request.encode(),
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return {r["name"]: [i for i in r["issues"] if i["severity"] in ("error", "fatal")] for r in json.loads(done.stdout)}


# Where Medplum 5.2's validator reads the package differently from the HL7 validator; each is matched narrowly.
MEDPLUM_READINGS = (
    # Extension slices (discriminator value:url) are matched through a `.url` child element with a fixed
    # value; the snapshots name the extension definition in type.profile instead, as the HL7 snapshot
    # generator writes them, so Medplum counts no member in any extension slice.
    ("structure", ("Consent.extension",), re.compile(r"Incorrect number of values provided for slice '\w+': expected 1\.\.1, but found 0")),
    # A pattern on a repeating element (Consent.organization 1..1 of 0..*) is compared with the whole array.
    ("structure", ("Consent.organization",), re.compile(r"Value did not match expected pattern")),
)


def _medplum_reading(issue: dict[str, Any]) -> bool:
    for code, where, details in MEDPLUM_READINGS:
        path = issue["expression"]
        at = tuple(path) == where if isinstance(where, tuple) else bool(path) and path[0].startswith(where)
        if issue["code"] == code and at and details.match(issue["details"]):
            return True
    return False


def _examples() -> dict[str, dict[str, Any]]:
    return {n.removeprefix("package/example/"): d for n, d in _json_files(_committed_tree(R4)).items() if n.startswith("package/example/Consent-")}


BROKEN_BASE = "Consent-casus-example-withdrawn.json"


@pytest.fixture(scope="module")
def medplum_reports(node_tools) -> dict[str, list[dict[str, Any]]]:
    """Medplum's errors for every example and every broken copy, in one run of the validator."""
    instances = {**_examples(), **{name: b.change(_examples()[BROKEN_BASE]) for name, b in BROKEN.items()}}
    return _medplum(node_tools, instances)


@pytest.mark.integration
def test_medplum_finds_every_r4_example_valid_against_its_profile(medplum_reports):
    baseline = {name: issues for name, issues in medplum_reports.items() if name in _examples()}
    assert baseline.keys() == _examples().keys()
    unexplained = {name: [i for i in issues if not _medplum_reading(i)] for name, issues in baseline.items()}
    assert unexplained == {name: [] for name in baseline}


def _without(resource: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != key}


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def change(resource: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(resource)
        target = out
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        return out

    return change


def _recorded_by_removed(resource: dict[str, Any]) -> dict[str, Any]:
    return {**resource, "extension": [e for e in resource["extension"] if not e["url"].endswith("/casus-recorded-by")]}


def _disclosure_category_recoded(resource: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    for coding in (c for category in out["category"] for c in category["coding"]):
        if coding["code"] == "IDSCL":
            coding["code"] = "TREAT"
    return out


def _performer_is_not_the_decider(resource: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    other = next(c["id"] for c in out["contained"] if c["resourceType"] == "Practitioner")
    out["performer"] = [{"reference": f"#{other}"}]
    return out


@dataclass(frozen=True)
class Breakage:
    """One way to break a valid CASUS Consent, and where each validator must say so."""

    change: Callable[[dict[str, Any]], dict[str, Any]]
    medplum: tuple[str, str, str]  # issue code, expression, details prefix
    hapi: tuple[str, str]  # location, message regex


BROKEN = {
    "status removed": Breakage(
        lambda r: _without(r, "status"),
        ("structure", "Consent.status", "Missing required property"),
        ("Consent", r"Consent\.status: minimum required = 1, but only found 0"),
    ),
    "unknown element": Breakage(
        _set(("colour",), "red"),
        ("structure", "Consent.colour", 'Invalid additional property "colour"'),
        ("Consent", r"Unrecognized property 'colour'"),
    ),
    "wrong fixed identifier system": Breakage(
        _set(("identifier", 0, "system"), "urn:example:other"),
        ("structure", "Consent.identifier.system", "Value did not match expected pattern"),
        ("Consent.identifier[0].system", r"Value is 'urn:example:other' but must be 'https://fhir\.cpft\.nhs\.uk/casus/Id/consent-form'"),
    ),
    "wrong category code": Breakage(
        _disclosure_category_recoded,
        ("structure", "Consent.category", "Incorrect number of values provided for slice 'informationDisclosure': expected 1..1, but found 0"),
        ("Consent", r"Slice 'Consent\.category:informationDisclosure': a matching slice is required, but not found"),
    ),
    "an extension removed": Breakage(
        _recorded_by_removed,
        ("structure", "Consent.extension", "Invalid number of values: expected 3..*, but found 2"),
        ("Consent", r"Slice 'Consent\.extension:recordedBy': a matching slice is required, but not found"),
    ),
    "grantor not the decider (casus-7)": Breakage(
        _performer_is_not_the_decider, ("invariant", "Consent", "Constraint casus-7 not met"), ("Consent", r"Constraint failed: casus-7: ")
    ),
}


@pytest.mark.integration
@pytest.mark.parametrize("breakage", BROKEN, ids=str)
def test_medplum_finds_a_broken_copy_invalid_for_the_rule_it_breaks(medplum_reports, breakage):
    code, where, details = BROKEN[breakage].medplum
    key = lambda i: (i["code"], tuple(i["expression"]), i["details"])  # noqa: E731
    new = [i for i in medplum_reports[breakage] if key(i) not in {key(b) for b in medplum_reports[BROKEN_BASE]}]
    assert new, f"{breakage}: Medplum reported nothing beyond the valid example's readings"
    assert all(i["expression"] == [where] for i in new), new
    assert any(i["code"] == code and i["details"].startswith(details) for i in new), new


# --------------------------------------------------------------------------- HAPI: the HL7 validator's core

HAPI_SOURCE = fhir_package.REPO_ROOT / "tools" / "hapi-validator"
HAPI_DIR = fhir_package.REPO_ROOT / ".cache" / "hapi-validator"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONSTRAINT_FAILED = re.compile(r"Constraint failed: (casus-\d+): ")
ADAPTER_INVARIANT = re.compile(r"(casus-\d+): ")


@pytest.fixture(scope="module")
def hapi_lib() -> Path:
    if shutil.which("mvn") is None or shutil.which("java") is None:
        pytest.skip("SKIPPED LOUDLY: Java/Maven not on PATH; the HL7 validator core (HAPI) check of the packages cannot run")
    installed = subprocess.run(["bash", str(HAPI_SOURCE / "install.sh"), str(HAPI_DIR)], capture_output=True, check=False, timeout=900)
    assert installed.returncode == 0, installed.stderr.decode(errors="replace")[-2000:]
    return HAPI_DIR / "lib"


def _hapi(lib: Path, release: Release, instances: dict[str, dict[str, Any]], folder: Path) -> dict[str, list[dict[str, str]]]:
    """HAPI's errors for the package's own StructureDefinitions and each instance, in one JVM."""
    tree = fhir_package.OUTPUT_DIR / release.package_name
    for name, resource in instances.items():
        (folder / name).write_text(json.dumps(resource), encoding="utf-8")
    files = sorted(tree.glob("package/StructureDefinition-*.json")) + [folder / n for n in instances]
    done = subprocess.run(
        ["java", "-cp", f"{lib}/*", str(HAPI_SOURCE / "Check.java"), str(tree), *map(str, files)], capture_output=True, check=False, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    reports: dict[str, list[dict[str, str]]] = {p.name: [] for p in files}
    for line in done.stdout.decode().splitlines():
        name, severity, location, message = line.split("\t", 3)
        if severity in ("error", "fatal", "exception"):
            reports[name].append({"location": location, "message": message})
    return reports


def _copy(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def changed(resource: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(resource)
        change(out)
        return out

    return changed


def _hapi_invariants(issues: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(m.group(1), i["location"]) for i in issues if (m := CONSTRAINT_FAILED.match(i["message"]))}


def _adapter_invariants(resource: dict[str, Any], version: str) -> set[tuple[str, str]]:
    scope = validation.Scope(resource, "Consent", resource)
    issues = validation.conformance_issues(scope, validation.CONSENT_PROFILES[version])  # type: ignore[index]
    return {(m.group(1), i.expression) for i in issues if i.severity == "error" and (m := ADAPTER_INVARIANT.match(i.diagnostics))}


# R4 copies of the base example that break CASUS invariants, each with the one it is made to break: the HL7
# validator core and the adapter must find the same invariants broken at the same places.
# The base example's provisions: [0] dad (deny), [1] school (permit), [2] THREAT, [3] HLEGAL.
R4_INVARIANT_BREAKAGES: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "root provision typed": (_copy(lambda c: c["provision"].update(type="deny")), "casus-13"),
    "nested provision untyped": (_copy(lambda c: c["provision"]["provision"][0].pop("type")), "casus-14"),
    "court order exception removed": (_copy(lambda c: c["provision"]["provision"].pop(3)), "casus-5"),
    "person provision with two actors": (
        _copy(lambda c: c["provision"]["provision"][0]["actor"].append(copy.deepcopy(c["provision"]["provision"][1]["actor"][0]))),
        "casus-2",
    ),
    "exception nested in a person provision": (
        _copy(lambda c: c["provision"]["provision"][1].update(provision=[{"type": "deny", "purpose": [{"system": ACT_REASON, "code": "THREAT"}]}])),
        "casus-4",
    ),
    "grantor not the decider": (_performer_is_not_the_decider, "casus-7"),
}
NESTED_BANK_DETAILS = _copy(
    lambda c: c["provision"]["provision"][1].update(
        provision=[
            {"type": "permit", "code": [{"coding": [{"system": f"{codes.CASUS_BASE}/CodeSystem/casus-information-type", "code": "bank-details"}]}]}
        ]
    )
)


@pytest.fixture(scope="module")
def hapi_reports(hapi_lib, tmp_path_factory) -> dict[str, list[dict[str, str]]]:
    """HAPI's errors for the R4 package's own StructureDefinitions, every example and every broken copy, in one JVM."""
    base = _examples()[BROKEN_BASE]
    instances = {
        **_examples(),
        **{f"{name}.json": b.change(base) for name, b in BROKEN.items()},
        **{f"{name}.json": change(base) for name, (change, _) in R4_INVARIANT_BREAKAGES.items()},
        "nested bank details.json": NESTED_BANK_DETAILS(base),
    }
    return _hapi(hapi_lib, R4, instances, tmp_path_factory.mktemp("hapi-r4"))


# The R4 core definitions' own example on Consent.identifier breaks an R4 core invariant; the snapshot copies it.
CORE_EXAMPLE = re.compile(r"if identifier\.system is 'urn:ietf:rfc:3986', then the identifier\.value must be a full URI")


@pytest.mark.integration
def test_hl7_validator_core_accepts_every_invariant_of_the_r4_profiles(hapi_reports):
    sds = {
        n: [i for i in issues if not CORE_EXAMPLE.match(i["message"])] for n, issues in hapi_reports.items() if n.startswith("StructureDefinition-")
    }
    assert sds == {n: [] for n in sds}


@pytest.mark.integration
def test_hl7_validator_core_loads_the_r4_package_without_failing(hapi_reports):
    assert [i for issues in hapi_reports.values() for i in issues if i["message"].startswith("java.")] == []


@pytest.mark.integration
def test_hl7_validator_core_finds_every_r4_example_valid_against_its_profile(hapi_reports):
    examples = {n: issues for n, issues in hapi_reports.items() if n in _examples()}
    assert examples == {n: [] for n in examples}


@pytest.mark.integration
@pytest.mark.parametrize("breakage", BROKEN, ids=str)
def test_hl7_validator_core_finds_a_broken_copy_invalid_for_the_rule_it_breaks(hapi_reports, breakage):
    where, message = BROKEN[breakage].hapi
    key = lambda i: (i["location"], i["message"])  # noqa: E731
    new = [i for i in hapi_reports[f"{breakage}.json"] if key(i) not in {key(b) for b in hapi_reports[BROKEN_BASE]}]
    assert any(i["location"] == where and re.match(message, i["message"]) for i in new), new


@pytest.mark.integration
@pytest.mark.parametrize("breakage", R4_INVARIANT_BREAKAGES, ids=str)
def test_hl7_validator_core_and_the_adapter_find_the_same_r4_invariants_broken(hapi_reports, breakage):
    change, broken = R4_INVARIANT_BREAKAGES[breakage]
    found = _hapi_invariants(hapi_reports[f"{breakage}.json"])
    assert broken in {key for key, _ in found}, hapi_reports[f"{breakage}.json"]
    assert found == _adapter_invariants(change(_examples()[BROKEN_BASE]), "r4")


@pytest.mark.integration
def test_hl7_validator_core_and_the_adapter_check_the_information_types_at_every_provision_depth(hapi_reports):
    where = "Consent.provision.provision[1].provision[0].code[0]"
    assert any(i["location"] == where and "casus-information-type" in i["message"] for i in hapi_reports["nested bank details.json"])
    adapter = validation.validate_consent(NESTED_BANK_DETAILS(_examples()[BROKEN_BASE]), "r4")
    assert any(i.expression == where and i.code == "code-invalid" for i in adapter)


# --------------------------------------------------------------------------- HAPI: the R5 package

# HAPI 7.4's R5 worker context tells the StructureDefinition validator of no FHIR type, so it reports every R5
# StructureDefinition's type (Consent, Extension, even a bare Patient profile) as undefined; not about CASUS.
HAPI_R5_TYPE_READING = re.compile(r"The type \w+ is not legal because it is not defined in the FHIR specification")


def _r5_examples() -> dict[str, dict[str, Any]]:
    """Each R4 example's form as the R5 mapping writes it (the R5 package carries no examples of its own)."""
    forms = sorted((fhir_package.PROFILES_DIR / "examples").glob("form-*.json"))
    return {f"Consent-r5-{p.name.removeprefix('form-')}": form_to_r5(parse_form(json.loads(p.read_text(encoding="utf-8")))) for p in forms}


def _do_not_share(consent: dict[str, Any]) -> dict[str, Any]:
    """The recipient sub-extension of the first casus-do-not-share extension."""
    extension = next(e for e in consent["extension"] if e["url"].endswith("/casus-do-not-share"))
    return next(e for e in extension["extension"] if e["url"] == "recipient")


R5_BASE = "Consent-r5-withdrawn.json"
# The R5 base's provisions: [0] school (permit), [1] THREAT, [2] HLEGAL; dad is do-not-share.
R5_INVARIANT_BREAKAGES: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "grantor not the decider": (_copy(lambda c: c.update(grantor=[{"reference": "#dad"}])), "casus-7"),
    "do-not-share person also shared with": (_copy(lambda c: _do_not_share(c)["valueReference"].update(reference="#school")), "casus-9"),
    "date not the recording date": (_copy(lambda c: c.update(date="2001-01-01")), "casus-10"),
    "permission without a care purpose": (_copy(lambda c: c["provision"][0]["purpose"].pop()), "casus-11"),
    "exception with a code": (_copy(lambda c: c["provision"][1].update(code=c["provision"][0]["code"])), "casus-12"),
    "provision nested in a permission": (_copy(lambda c: c["provision"][0].update(provision=[{"action": c["provision"][0]["action"]}])), "casus-12"),
}


@pytest.fixture(scope="module")
def hapi_r5_reports(hapi_lib, tmp_path_factory) -> dict[str, list[dict[str, str]]]:
    """HAPI's errors for the R5 package's own StructureDefinitions, the R5 examples and broken copies, in one JVM."""
    base = _r5_examples()[R5_BASE]
    instances = {**_r5_examples(), **{f"{name}.json": change(base) for name, (change, _) in R5_INVARIANT_BREAKAGES.items()}}
    return _hapi(hapi_lib, R5, instances, tmp_path_factory.mktemp("hapi-r5"))


@pytest.mark.integration
def test_hl7_validator_core_accepts_every_invariant_of_the_r5_profiles(hapi_r5_reports):
    sds = {
        n: [i for i in issues if not HAPI_R5_TYPE_READING.match(i["message"])]
        for n, issues in hapi_r5_reports.items()
        if n.startswith("StructureDefinition-")
    }
    assert sds == {n: [] for n in sds}


@pytest.mark.integration
def test_hl7_validator_core_finds_every_r5_example_valid_against_its_profile(hapi_r5_reports):
    examples = {n: issues for n, issues in hapi_r5_reports.items() if n in _r5_examples()}
    assert examples == {n: [] for n in examples}


@pytest.mark.integration
@pytest.mark.parametrize("breakage", R5_INVARIANT_BREAKAGES, ids=str)
def test_hl7_validator_core_and_the_adapter_find_the_same_r5_invariants_broken(hapi_r5_reports, breakage):
    change, broken = R5_INVARIANT_BREAKAGES[breakage]
    found = _hapi_invariants(hapi_r5_reports[f"{breakage}.json"])
    assert broken in {key for key, _ in found}, hapi_r5_reports[f"{breakage}.json"]
    assert found == _adapter_invariants(change(_r5_examples()[R5_BASE]), "r5")
