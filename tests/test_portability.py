"""The embedded default runs where there is no POSIX-only module: Windows has no ``fcntl``, macOS no ``posix_fallocate``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

WITHOUT_POSIX_ONLY_CALLS = textwrap.dedent("""
    import os, sys
    sys.modules["fcntl"] = None  # any `import fcntl` now raises ImportError, as on Windows
    for name in ("posix_fallocate", "fork", "getuid"):
        if hasattr(os, name):
            delattr(os, name)  # as on macOS (posix_fallocate) or Windows (the rest)

    import json
    from fhir_adapter.consent_service import ConsentService
    from fhir_adapter.decision import DecisionRequest, Recipient
    from fhir_adapter.form import PROFILES_DIR, parse_form
    from fhir_adapter.server import create_app
    from fhir_adapter.store import Store

    store = Store.open(f"sqlite:///{sys.argv[1]}")
    service = ConsentService(store)
    form = parse_form(json.loads((PROFILES_DIR / "examples" / "form-competent-under-16.json").read_text()))
    service.create(form, actor="portability")
    verdict = service.decide(DecisionRequest(form.young_person.nhs_number, Recipient(role="mother"), ("attendance",), "TREAT"),
                             actor="portability")
    create_app(store=store)
    audited = [r.action for r in store.audit_log(actor="portability")]
    store.close()
    print(verdict.decision, audited.count("decision"))
""")


def test_the_package_imports_and_decides_on_the_embedded_store_without_posix_only_calls(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", WITHOUT_POSIX_ONLY_CALLS, str(tmp_path / "casus.db")], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["permit", "1"]
