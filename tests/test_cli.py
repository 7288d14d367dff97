"""The engineers' CLI: validate and map, with the exit codes docs/integration-engineers.md promises."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from fhir_adapter.cli import PROGRESS_FROM_FILES, FileProgress, _load_demo_forms, main
from fhir_adapter.form import PROFILES_DIR

EXAMPLES = PROFILES_DIR / "examples"
FORM = EXAMPLES / "form-competent-under-16.json"
CONSENT = EXAMPLES / "Consent-casus-example-competent-under-16.json"
R5_NEW_SHAPE = Path(__file__).resolve().parent / "fixtures" / "new-shape" / "Consent-r5-competent-under-16.json"


def invoke(*args: str, stdin: bytes | None = None) -> Result:
    result = CliRunner().invoke(main, list(args), input=stdin)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def run(*args: str) -> tuple[int, str]:
    result = invoke(*args)
    return result.exit_code, result.stdout


def bundle_of(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def not_casus(consent: dict) -> dict:
    changed = json.loads(json.dumps(consent))
    changed["policyRule"]["coding"][0]["code"] = "OPTOUT"
    return changed


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


def test_validate_r5_applies_the_r5_profile(tmp_path: Path):
    consent = json.loads(R5_NEW_SHAPE.read_text())
    consent["provision"][0]["provision"] = [{"action": consent["provision"][0]["action"]}]
    bad = tmp_path / "nested.json"
    bad.write_text(json.dumps(consent))
    code, out = run("validate", "--fhir-version", "r5", "--format", "json", str(bad))
    assert code == 1
    assert "Consent.provision.provision|max" in out and '"Consent.provision[0].provision"' in out


def test_validate_exits_2_for_truncated_json_naming_the_problem_in_one_line(tmp_path: Path):
    broken = tmp_path / "broken.json"
    broken.write_text(CONSENT.read_text()[:200])
    result = invoke("validate", str(broken))
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{broken}: not valid JSON: ")
    assert result.stdout == ""


def test_validate_exits_2_for_a_missing_file_with_one_line_and_no_verdict(tmp_path: Path):
    absent = tmp_path / "absent.json"
    result = invoke("validate", str(absent))
    assert result.exit_code == 2
    assert result.stderr == f"{absent}: cannot read: No such file or directory\n"
    assert "invalid" not in result.stdout + result.stderr


def test_validate_exits_2_for_a_file_that_cannot_be_opened(tmp_path: Path):
    a_file = tmp_path / "file.json"
    a_file.write_text("{}")
    result = invoke("validate", str(a_file / "inside.json"))
    assert result.exit_code == 2
    assert result.stderr == f"{a_file / 'inside.json'}: cannot read: Not a directory\n"


def test_validate_checks_each_consent_of_a_bundle_locating_issues_at_the_entry(tmp_path: Path):
    consent = json.loads(CONSENT.read_text())
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(bundle_of(consent, not_casus(consent))))
    result = invoke("validate", str(bundle))
    assert result.exit_code == 1
    assert "  error Bundle.entry[1].resource.policyRule: " in result.stdout
    assert "Bundle.entry[0]" not in result.stdout


def test_validate_says_valid_for_a_bundle_of_valid_consents(tmp_path: Path):
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(bundle_of(*(json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("Consent-*.json"))))))
    result = invoke("validate", str(bundle))
    assert (result.exit_code, result.stdout) == (0, f"{bundle}: valid\n")


def test_validate_reports_a_bundle_entry_without_a_resource(tmp_path: Path):
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "urn:uuid:1"}]}))
    result = invoke("validate", str(bundle))
    assert result.exit_code == 1
    assert "  error Bundle.entry[0]: a Bundle entry without a resource" in result.stdout


def test_validate_reads_every_json_file_in_a_folder(tmp_path: Path):
    consent = json.loads(CONSENT.read_text())
    (tmp_path / "a.json").write_text(json.dumps(consent))
    (tmp_path / "b.json").write_text(json.dumps(not_casus(consent)))
    (tmp_path / "notes.txt").write_text("not read")
    result = invoke("validate", "--quiet", str(tmp_path))
    assert result.exit_code == 1
    verdicts = [line.split(": ")[:2] for line in result.stdout.splitlines()]
    assert [(name, verdict.split(" (")[0]) for name, verdict in verdicts] == [
        (str(tmp_path / "a.json"), "valid"),
        (str(tmp_path / "b.json"), "invalid"),
    ]


def test_validate_of_a_folder_without_json_files_exits_2(tmp_path: Path):
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr == f"{tmp_path}: a folder with no *.json files\n"


def test_validate_reads_standard_input_for_a_dash():
    result = invoke("validate", "-", stdin=CONSENT.read_bytes())
    assert (result.exit_code, result.stdout) == (0, "<stdin>: valid\n")


def test_validate_json_format_prints_one_operation_outcome_for_one_input():
    result = invoke("validate", "--format", "json", str(CONSENT))
    assert result.exit_code == 0
    assert json.loads(result.stdout)["resourceType"] == "OperationOutcome"


def test_validate_json_format_prints_a_bundle_of_outcomes_naming_each_file(tmp_path: Path):
    absent = tmp_path / "absent.json"
    result = invoke("validate", "--format", "json", str(CONSENT), str(absent))
    assert result.exit_code == 2
    bundle = json.loads(result.stdout)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert [e["fullUrl"] for e in bundle["entry"]] == [CONSENT.resolve().as_uri(), absent.resolve().as_uri()]
    assert [e["resource"]["issue"][0]["severity"] for e in bundle["entry"]] == ["information", "fatal"]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "files", "shown"),
    [
        (FakeTerminal(), PROGRESS_FROM_FILES, True),
        (FakeTerminal(), PROGRESS_FROM_FILES - 1, False),
        (io.StringIO(), PROGRESS_FROM_FILES, False),
    ],
    ids=["terminal-many-files", "terminal-few-files", "pipe-many-files"],
)
def test_a_progress_line_is_shown_only_on_a_terminal_for_many_files(stream: io.StringIO, files: int, shown: bool):
    assert (FileProgress.for_stream(stream, files) is not None) == shown


def test_the_progress_line_counts_files_in_place():
    terminal = FakeTerminal()
    progress = FileProgress(terminal, 12)
    progress.advance()
    progress.advance()
    assert terminal.getvalue() == "\rvalidated 1/12 files\rvalidated 2/12 files"


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


def test_map_r4_to_r5_and_back_returns_the_same_consent_with_its_id(tmp_path: Path):
    r5_file = tmp_path / "r5.json"
    r5_file.write_text(invoke("map", "--to", "r5", str(CONSENT)).stdout)
    assert json.loads(r5_file.read_text())["id"] == "casus-example-competent-under-16"
    back = invoke("map", "--to", "r4", str(r5_file))
    assert back.exit_code == 0
    assert json.loads(back.stdout) == json.loads(CONSENT.read_text())


def test_map_reads_standard_input_for_a_dash():
    result = invoke("map", "--to", "r4", "-", stdin=FORM.read_bytes())
    assert result.exit_code == 0
    assert json.loads(result.stdout)["resourceType"] == "Consent"


def test_map_of_a_missing_file_exits_2_with_one_line(tmp_path: Path):
    result = invoke("map", "--to", "r4", str(tmp_path / "absent.json"))
    assert result.exit_code == 2
    assert result.stderr == f"{tmp_path / 'absent.json'}: cannot read: No such file or directory\n"


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


def test_validate_of_several_files_ends_with_a_count_of_each_verdict_on_stderr(tmp_path: Path):
    result = invoke("validate", "--quiet", str(CONSENT), str(tmp_path / "absent.json"))
    assert result.stderr.splitlines()[-1] == "2 files: 1 valid, 1 unusable"


def test_the_demo_refuses_to_start_without_its_sample_forms(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as stopped:
        _load_demo_forms(None, tmp_path)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"the sample forms are missing from this installation (no form-*.json in {tmp_path})\n"
