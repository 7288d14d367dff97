"""The engineers' CLI: validate and map, with the exit codes docs/integration-engineers.md promises."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from fhir_adapter.cli import main
from fhir_adapter.form import PROFILES_DIR

EXAMPLES = PROFILES_DIR / "examples"
FORM = EXAMPLES / "form-competent-under-16.json"
CONSENT = EXAMPLES / "Consent-casus-example-competent-under-16.json"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout


def test_validate_exits_0_for_every_shipped_example():
    code, out = run("validate", *map(str, sorted(EXAMPLES.glob("Consent-*.json"))))
    assert code == 0
    assert '"severity": "error"' not in out


def test_validate_exits_1_for_a_consent_that_is_not_casus(tmp_path: Path):
    consent = json.loads(CONSENT.read_text())
    consent["provision"]["type"] = "permit"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(consent))
    code, out = run("validate", str(bad))
    assert code == 1
    assert "Consent.provision.type" in out


def test_validate_exits_2_for_truncated_json(tmp_path: Path):
    broken = tmp_path / "broken.json"
    broken.write_text(CONSENT.read_text()[:200])
    code, out = run("validate", str(broken))
    assert code == 2
    assert "not valid JSON" in out


def test_validate_exits_2_for_a_missing_file(tmp_path: Path):
    code, _ = run("validate", str(tmp_path / "absent.json"))
    assert code == 2


def test_validate_reports_the_worst_exit_code_over_several_files(tmp_path: Path):
    broken = tmp_path / "broken.json"
    broken.write_bytes(b"\xff\xfe not utf-8")
    code, _ = run("validate", "--quiet", str(CONSENT), str(broken))
    assert code == 2


def test_map_form_to_r4_gives_the_shipped_example():
    code, out = run("map", "--to", "r4", str(FORM))
    assert code == 0
    shipped = json.loads(CONSENT.read_text())
    shipped.pop("id")  # the example carries an id of its own; the mapping leaves ids to the server
    assert json.loads(out) == shipped


def test_map_r4_to_r5_and_back_to_form_is_lossless(tmp_path: Path):
    code, r5_text = run("map", "--to", "r5", str(CONSENT))
    assert code == 0 and json.loads(r5_text)["decision"] == "deny"
    r5_file = tmp_path / "r5.json"
    r5_file.write_text(r5_text)
    code, form_text = run("map", "--to", "form", str(r5_file))
    assert code == 0
    assert json.loads(form_text) == json.loads(FORM.read_text())


def test_map_rejects_a_non_casus_consent_with_an_operation_outcome(corpus_dir: Path):
    code, out = run("map", "--to", "form", str(corpus_dir / "r4" / "hl7-consent-example-basic.json"))
    assert code == 1
    outcome = json.loads(out)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["diagnostics"].startswith("not a CASUS consent")
    assert all(issue.get("expression") for issue in outcome["issue"])


def test_map_rejects_an_invalid_form_naming_the_field(tmp_path: Path):
    form = json.loads(FORM.read_text())
    form["youngPerson"]["nhsNumber"] = "9434765918"
    bad = tmp_path / "form.json"
    bad.write_text(json.dumps(form))
    code, out = run("map", "--to", "r4", str(bad))
    assert code == 1
    assert "$.youngPerson.nhsNumber" in out
