"""The CASUS profiles as FHIR NPM packages, one per FHIR release, the form the HL7 validator, HAPI and Firely load.

``profiles/`` stays the source: hand-authored StructureDefinitions (differential only) and the generated
CodeSystems, ValueSets and example Consents.  A package adds what tools expect and authors should not
retype: a snapshot on every StructureDefinition, a generated narrative on every resource without one,
an ImplementationGuide resource, ``package.json`` and the ``.index.json`` files.  StructureDefinitions
go to the package of their ``fhirVersion``; CodeSystems and ValueSets (release-neutral) to both; an
example goes to the package holding the profile it claims.

Snapshots come from ``fhir-snapshot-generator`` (Node, see ``tools/fhir-package/``), run on a staged
package, so the published snapshots are an independent tool's expansion, not our own reading of the
differential rules.  Everything else is pure and reproducible: same inputs, same bytes, down to the
``.tgz`` (sorted entries, fixed mtime/owner, gzip mtime 0), which is what lets a test find a committed
package that has gone stale.
"""

from __future__ import annotations

import gzip
import html
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .form import PROFILES_DIR

REPO_ROOT = PROFILES_DIR.resolve().parent  # the checkout: fhir_adapter/profiles links to its profiles/
OUTPUT_DIR = PROFILES_DIR / "package"
TOOLS_SOURCE = REPO_ROOT / "tools" / "fhir-package"
TOOLS_DIR = REPO_ROOT / ".cache" / "fhir-package"

CANONICAL = "https://fhir.cpft.nhs.uk/casus"
PUBLISHER = "Cambridgeshire and Peterborough NHS Foundation Trust (CASUS)"
LICENSE = "Apache-2.0"
CONFORMANCE_TYPES = ("StructureDefinition", "CodeSystem", "ValueSet")
XHTML_NS = "http://www.w3.org/1999/xhtml"
# npm's own fixed timestamp for packed entries (1985-10-26T08:15:00Z): a date, not zero, that tools accept.
TAR_MTIME = 499162500

Resource = dict[str, Any]
Files = dict[str, bytes]
Snapshotter = Callable[[Path], dict[str, Any]]


class PackageError(Exception):
    """The sources cannot make a package (inconsistent versions, an example with no profile, a tool failure)."""


@dataclass(frozen=True)
class Release:
    """One FHIR release a package is built for."""

    key: str
    fhir_version: str
    core_package: str

    @property
    def package_name(self) -> str:
        return f"uk.nhs.cpft.casus.{self.key}"

    def holds(self, fhir_version: str) -> bool:
        return fhir_version.split(".")[:2] == self.fhir_version.split(".")[:2]


RELEASES = (Release("r4", "4.0.1", "hl7.fhir.r4.core"), Release("r5", "5.0.0", "hl7.fhir.r5.core"))


# --------------------------------------------------------------------------- sources


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def conformance_resources(profiles_dir: Path = PROFILES_DIR) -> list[Resource]:
    """Every StructureDefinition, CodeSystem and ValueSet in ``profiles_dir`` (schemas and other JSON skipped)."""
    found = (_read(p) for p in sorted(profiles_dir.glob("*.json")))
    return [r for r in found if isinstance(r, dict) and r.get("resourceType") in CONFORMANCE_TYPES]


def example_resources(profiles_dir: Path = PROFILES_DIR) -> list[Resource]:
    """The FHIR examples in ``profiles_dir/examples`` (the hand-written CASUS forms beside them are not FHIR)."""
    found = (_read(p) for p in sorted((profiles_dir / "examples").glob("*.json")))
    return [r for r in found if isinstance(r, dict) and "resourceType" in r]


def artefact_version(resources: Iterable[Resource]) -> str:
    """The one version every CASUS artefact carries: a package has a single version, so they must agree."""
    versions = {r.get("version") for r in resources}
    if len(versions) != 1 or None in versions:
        raise PackageError(f"the profile artefacts must share one version to make a package; found {sorted(map(str, versions))}")
    return str(versions.pop())


# --------------------------------------------------------------------------- contents


def _xhtml(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<div xmlns="{XHTML_NS}"><table>{cells}</table></div>'


def narrative(resource: Resource) -> dict[str, str]:
    """A small generated narrative: what the resource is, never its clinical content (names, choices)."""
    rows = [(resource["resourceType"], str(resource.get("title") or resource.get("name") or resource.get("id", "")))]
    for field in ("url", "version", "status"):
        if isinstance(resource.get(field), str):
            rows.append((field, resource[field]))
    if resource["resourceType"] == "StructureDefinition":
        rows.append(("constrains", f"{resource.get('type')} (FHIR {resource.get('fhirVersion')})"))
    profiles = resource.get("meta", {}).get("profile", [])
    if profiles:
        rows.append(("conforms to", ", ".join(profiles)))
    return {"status": "generated", "div": _xhtml(rows)}


def with_narrative(resource: Resource) -> Resource:
    """``resource`` with a generated narrative placed where FHIR orders it (after meta), unless it has one."""
    if "text" in resource:
        return resource
    head = [k for k in ("resourceType", "id", "meta", "implicitRules", "language") if k in resource]
    out: dict[str, Any] = {k: resource[k] for k in head}
    out["text"] = narrative(resource)
    out.update((k, v) for k, v in resource.items() if k not in out)
    return out


def _for_release(release: Release, resource: Resource) -> Resource:
    """A conformance resource as the package of ``release`` carries it: its own fhirVersion for extensions borrowed across releases."""
    if resource["resourceType"] != "StructureDefinition" or release.holds(resource["fhirVersion"]):
        return resource
    return {**resource, "fhirVersion": release.fhir_version}


def _referenced_profiles(sd: Resource) -> set[str]:
    elements = sd.get("differential", {}).get("element", [])
    return {p for e in elements for t in e.get("type", []) for p in t.get("profile", []) + t.get("targetProfile", [])}


def release_resources(release: Release, conformance: list[Resource]) -> list[Resource]:
    """The conformance resources of one release's package.

    StructureDefinitions of the release, every CodeSystem and ValueSet, and any extension definition
    of another release that a profile here uses and this release does not define itself: a CASUS
    extension on ``Consent`` with a primitive, Coding or Reference value reads the same in R4 and R5.
    """
    sds = [r for r in conformance if r["resourceType"] == "StructureDefinition"]
    own = [sd for sd in sds if release.holds(sd["fhirVersion"])]
    own_urls = {sd["url"] for sd in own}
    used = set().union(*(_referenced_profiles(sd) for sd in own)) if own else set()
    borrowed = [sd for sd in sds if sd["type"] == "Extension" and sd["url"] in used - own_urls]
    terminology = [r for r in conformance if r["resourceType"] != "StructureDefinition"]
    return [_for_release(release, r) for r in own + borrowed + terminology]


def release_examples(release: Release, examples: list[Resource], profile_urls: set[str]) -> list[Resource]:
    """The examples that claim a profile of this package."""
    return [e for e in examples if set(e.get("meta", {}).get("profile", [])) & profile_urls]


def implementation_guide(release: Release, version: str, resources: list[Resource], examples: list[Resource]) -> Resource:
    """The ImplementationGuide resource naming every artefact and example (R4 and R5 spell examples differently)."""
    entries: list[dict[str, Any]] = []
    for r in resources:
        entry: dict[str, Any] = {"reference": {"reference": f"{r['resourceType']}/{r['id']}"}, "name": r.get("title") or r["id"]}
        entry.update({"exampleBoolean": False} if release.key == "r4" else {"isExample": False})
        entries.append(entry)
    for e in examples:
        entry = {"reference": {"reference": f"{e['resourceType']}/{e['id']}"}, "name": e["id"]}
        profile = e["meta"]["profile"][0]
        entry.update({"exampleCanonical": profile} if release.key == "r4" else {"isExample": True, "profile": [profile]})
        entries.append(entry)
    name = release.package_name
    return {
        "resourceType": "ImplementationGuide",
        "id": name,
        "url": f"{CANONICAL}/ImplementationGuide/{name}",
        "version": version,
        "name": f"CASUSConsent{release.key.upper()}",
        "title": f"CASUS Consent profiles (FHIR {release.key.upper()})",
        "status": "active",
        "experimental": False,
        "publisher": PUBLISHER,
        "description": "The CASUS profiles of Consent, their extensions, CodeSystems, ValueSets and examples.",
        "packageId": name,
        "license": LICENSE,
        "fhirVersion": [release.fhir_version],
        "definition": {"resource": entries},
    }


def manifest(release: Release, version: str) -> dict[str, Any]:
    """``package/package.json``: the NPM manifest FHIR tools read (no build date, so rebuilding changes nothing)."""
    return {
        "name": release.package_name,
        "version": version,
        "type": "fhir.ig",
        "canonical": CANONICAL,
        "url": CANONICAL,
        "title": f"CASUS Consent profiles (FHIR {release.key.upper()})",
        "description": "Profiles, extensions and terminology for young people's confidentiality choices recorded on the CASUS consent form.",
        "fhirVersions": [release.fhir_version],
        "dependencies": {release.core_package: release.fhir_version},
        "author": PUBLISHER,
        "license": LICENSE,
        "jurisdiction": "urn:iso:std:iso:3166#GB",
        "directories": {"lib": "package", "example": "example"},
    }


def _file_name(resource: Resource) -> str:
    return f"{resource['resourceType']}-{resource['id']}.json"


def index(resources: Iterable[Resource]) -> dict[str, Any]:
    """A ``.index.json`` (index-version 2): one entry per resource file, the fields tools search by."""
    files = []
    for r in sorted(resources, key=_file_name):
        entry = {"filename": _file_name(r), "resourceType": r["resourceType"], "id": r["id"]}
        entry.update((k, r[k]) for k in ("url", "version", "kind", "type") if isinstance(r.get(k), str))
        files.append(entry)
    return {"index-version": 2, "files": files}


def dumps(document: Any) -> bytes:
    """The one serialisation every package file uses, so equal content is equal bytes."""
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def package_files(release: Release, profiles_dir: Path = PROFILES_DIR, snapshots: dict[str, Any] | None = None) -> Files:
    """Every file of one release's package by its path in the tarball (``package/...``).

    With ``snapshots`` (canonical URL -> snapshot) each StructureDefinition carries its snapshot, placed
    before the differential as FHIR orders them; without, the package is the staged input the snapshot
    generator reads.
    """
    conformance = conformance_resources(profiles_dir)
    resources = release_resources(release, conformance)
    profile_urls = {r["url"] for r in resources if r["resourceType"] == "StructureDefinition"}
    examples = release_examples(release, example_resources(profiles_dir), profile_urls)
    version = artefact_version(conformance)
    resources = [*resources, implementation_guide(release, version, resources, examples)]
    resources = [with_narrative(_with_snapshot(r, snapshots)) for r in resources]
    examples = [with_narrative(e) for e in examples]
    files = {f"package/{_file_name(r)}": dumps(r) for r in resources}
    files.update({f"package/example/{_file_name(e)}": dumps(e) for e in examples})
    files["package/package.json"] = dumps(manifest(release, version))
    files["package/.index.json"] = dumps(index(resources))
    if examples:
        files["package/example/.index.json"] = dumps(index(examples))
    return dict(sorted(files.items()))


def _with_snapshot(resource: Resource, snapshots: dict[str, Any] | None) -> Resource:
    if snapshots is None or resource["resourceType"] != "StructureDefinition":
        return resource
    if resource["url"] not in snapshots:
        raise PackageError(f"no snapshot was generated for {resource['url']}")
    out: Resource = {}
    for key, value in resource.items():
        if key == "differential":
            out["snapshot"] = snapshots[resource["url"]]
        out[key] = value
    return out


def without_snapshots(files: Files) -> Files:
    """``files`` with every StructureDefinition's snapshot removed: what a package holds apart from the Node tool's output."""
    out = {}
    for name, data in files.items():
        document = json.loads(data) if name.endswith(".json") else None
        if isinstance(document, dict) and document.get("resourceType") == "StructureDefinition":
            document.pop("snapshot", None)
            data = dumps(document)
        out[name] = data
    return out


# --------------------------------------------------------------------------- tarball


def tgz(files: Files) -> bytes:
    """The package tarball, byte-for-byte reproducible: sorted entries, fixed mtime, owner root, gzip mtime 0."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(files[name]), TAR_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(files[name]))
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


def tgz_name(release: Release, version: str) -> str:
    return f"{release.package_name}-{version}.tgz"


def read_tree(root: Path) -> Files:
    """The files of an unpacked package folder (``root/package/...``) as ``package_files`` returns them."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "package").rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- snapshots (Node)


class ToolsMissing(PackageError):
    """The Node tools are not installed in the cache."""


def node_snapshotter(tools_dir: Path = TOOLS_DIR) -> Snapshotter:
    """Snapshots by ``fhir-snapshot-generator``, installed in ``tools_dir`` by ``tools/fhir-package/install.sh``."""
    node = shutil.which("node")
    if node is None or not (tools_dir / "node_modules" / "fhir-snapshot-generator").is_dir():
        raise ToolsMissing(
            f"the snapshot generator is not installed in {tools_dir}: run `make package-tools` "
            f"(bash tools/fhir-package/install.sh) with Node.js 20+ on the PATH"
        )

    def run(staged_root: Path) -> dict[str, Any]:
        script = TOOLS_SOURCE / "snapshot.mjs"
        done = subprocess.run(
            [node, str(script), str(tools_dir), str(tools_dir / "fhir-cache"), str(staged_root)], capture_output=True, check=False, timeout=600
        )
        if done.returncode != 0:
            raise PackageError(f"fhir-snapshot-generator failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")
        return json.loads(done.stdout)

    return run


def build(release: Release, snapshotter: Snapshotter, profiles_dir: Path = PROFILES_DIR) -> Files:
    """One release's package with snapshots: stage it without, let the generator expand it, then assemble."""
    staged = package_files(release, profiles_dir)
    with tempfile.TemporaryDirectory(prefix="casus-fhir-package-") as tmp:
        root = Path(tmp)
        for name, data in staged.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        snapshots = snapshotter(root) if any(n.startswith("package/StructureDefinition-") for n in staged) else {}
    return package_files(release, profiles_dir, snapshots)


def write(release: Release, files: Files, out_dir: Path = OUTPUT_DIR) -> tuple[Path, Path]:
    """Write the unpacked package (``out_dir/<name>/package/...``, for reading) and its ``.tgz`` (for tools)."""
    tree = out_dir / release.package_name
    if tree.exists():
        shutil.rmtree(tree)
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    version = json.loads(files["package/package.json"])["version"]
    for old in out_dir.glob(f"{release.package_name}-*.tgz"):
        old.unlink()
    archive = out_dir / tgz_name(release, version)
    archive.write_bytes(tgz(files))
    return tree, archive


def build_all(out_dir: Path = OUTPUT_DIR, tools_dir: Path = TOOLS_DIR, profiles_dir: Path = PROFILES_DIR) -> list[Path]:
    """Build and write every release's package; the paths of the tarballs written."""
    snapshotter = node_snapshotter(tools_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [write(release, build(release, snapshotter, profiles_dir), out_dir)[1] for release in RELEASES]


def install_tools(tools_dir: Path = TOOLS_DIR) -> None:
    """Install the pinned Node tools into ``tools_dir`` (npm ci from the committed lock file; a no-op when current)."""
    done = subprocess.run(["bash", str(TOOLS_SOURCE / "install.sh"), str(tools_dir)], capture_output=True, check=False, timeout=900)
    if done.returncode != 0:
        raise ToolsMissing(f"installing the Node tools failed: {done.stderr.decode(errors='replace')[-2000:]}")
