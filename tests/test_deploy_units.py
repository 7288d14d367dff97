"""The systemd units and example settings in deploy/ are valid and use the sync's exit-code contract.

``systemd-analyze verify`` checks the units where it is installed (its check that the command exists is met by
pointing a copy at this environment's ``fhir-adapter``); a small parser checks what matters everywhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fhir_adapter.sync import EXIT_SKIPPED

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SHIPPED_COMMAND = "/srv/casus/.venv/bin/fhir-adapter"


def unit_sections(path: Path) -> dict[str, dict[str, str]]:
    """A unit file as {section: {key: value}}; fails on a line that is neither a section, a key=value nor a comment."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if match := re.fullmatch(r"\[([A-Za-z]+)\]", stripped):
            current = sections.setdefault(match.group(1), {})
            continue
        key, equals, value = stripped.partition("=")
        assert current is not None and equals and re.fullmatch(r"[A-Za-z]+", key.strip()), f"{path.name}:{number}: {line!r}"
        current[key.strip()] = value.strip()
    return sections


def test_the_service_treats_a_skipped_run_as_success() -> None:
    service = unit_sections(DEPLOY / "casus-sync.service")["Service"]

    assert service["SuccessExitStatus"].split() == [str(EXIT_SKIPPED)]


def test_the_service_runs_one_sync_writing_its_summary_file() -> None:
    service = unit_sections(DEPLOY / "casus-sync.service")["Service"]

    assert service["Type"] == "oneshot"
    assert service["ExecStart"].split()[:2] == [SHIPPED_COMMAND, "sync"] and "--summary-file" in service["ExecStart"]
    assert service["EnvironmentFile"] == "/etc/casus/sync.env"


def test_the_timer_starts_the_service_every_ten_minutes_and_catches_up_after_downtime() -> None:
    timer = unit_sections(DEPLOY / "casus-sync.timer")

    assert (timer["Timer"]["OnCalendar"], timer["Timer"]["Persistent"], timer["Install"]["WantedBy"]) == ("*:0/10", "true", "timers.target")


def test_the_example_settings_name_only_settings_the_operators_guide_documents() -> None:
    guide = (DEPLOY.parent / "docs" / "operators.md").read_text(encoding="utf-8")
    names = [
        line.lstrip("# ").split("=")[0] for line in (DEPLOY / "sync.env.example").read_text().splitlines() if re.match(r"#? ?CASUS_[A-Z_]+=", line)
    ]

    assert names and all(f"`{name}`" in guide for name in names)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    command = Path(sys.executable).parent / "fhir-adapter"
    for name in ("casus-sync.service", "casus-sync.timer"):
        (tmp_path / name).write_text((DEPLOY / name).read_text().replace(SHIPPED_COMMAND, str(command)))

    done = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "casus-sync.service"), str(tmp_path / "casus-sync.timer")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
