"""What an installed wheel relies on: data read through the package, the build settings that ship it, the Makefile
variables the README names, and where the test suite finds the shared corpus.  The full install-and-use check is
scripts/check_wheel.sh (run by `make test`)."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

import fhir_adapter
from fhir_adapter.facade import openapi
from fhir_adapter.form import PROFILES_DIR
from fhir_adapter.package_data import openapi_text, profiles_dir
from tests.conftest import CorpusMissingWarning, corpus_or_skip, in_ci

REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path(fhir_adapter.__file__).resolve().parent


def relative_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_profiles_are_read_from_inside_the_package():
    assert PROFILES_DIR == profiles_dir() == PACKAGE / "profiles"


def test_the_package_profiles_are_the_published_profiles_folder():
    assert PROFILES_DIR.resolve() == (REPO / "profiles").resolve()
    assert relative_files(PROFILES_DIR) == relative_files(REPO / "profiles")


def test_the_served_openapi_document_is_the_published_one():
    assert openapi_text() == (REPO / "docs" / "openapi.json").read_text(encoding="utf-8")
    assert openapi.document()["openapi"].startswith("3.")


def test_the_build_ships_every_profile_and_the_openapi_document_as_package_data():
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["fhir_adapter"]
    shipped = {str(p.relative_to(PACKAGE)) for pattern in patterns for p in PACKAGE.glob(pattern)}
    wanted = {f"profiles/{name}" for name in relative_files(REPO / "profiles") if name.endswith(".json")} | {"openapi.json"}
    assert wanted <= shipped


def test_the_license_is_an_spdx_string_with_a_setuptools_that_reads_it():
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert config["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in config["build-system"]["requires"]


def test_make_demo_passes_port_to_the_demo():
    dry_run = subprocess.run(["make", "-n", "demo", "PORT=9123"], cwd=REPO, capture_output=True, text=True, timeout=30, check=True)
    assert "fhir-adapter demo --port 9123" in dry_run.stdout


def test_make_test_runs_the_wheel_check():
    dry_run = subprocess.run(["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, timeout=30, check=True)
    assert "scripts/check_wheel.sh" in dry_run.stdout


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("1", True), ("", False), ("false", False)])
def test_ci_is_recognised_from_the_ci_variable(value: str, expected: bool):
    assert in_ci({"CI": value}) is expected


def test_a_missing_corpus_fails_under_ci(tmp_path: Path):
    with pytest.raises(pytest.fail.Exception, match="CASUS_SHARED_DIR"):
        corpus_or_skip(tmp_path / "absent", ci=True)


def test_a_missing_corpus_warns_and_skips_outside_ci(tmp_path: Path):
    with pytest.warns(CorpusMissingWarning, match="CASUS_SHARED_DIR"), pytest.raises(pytest.skip.Exception):
        corpus_or_skip(tmp_path / "absent", ci=False)


def test_a_present_corpus_is_used(tmp_path: Path):
    assert corpus_or_skip(tmp_path, ci=True) == tmp_path
