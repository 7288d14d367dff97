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
    sys.modules["resource"] = None  # no rlimits on Windows either
    import select
    if hasattr(select, "poll"):
        delattr(select, "poll")  # Windows has only select()
    for name in ("posix_fallocate", "fork", "getuid"):
        if hasattr(os, name):
            delattr(os, name)  # as on macOS (posix_fallocate) or Windows (the rest)

    import json
    from datetime import datetime, timezone
    from fhir_adapter.consent_service import ConsentService
    from fhir_adapter.decision import DecisionRequest, Recipient
    from fhir_adapter.form import PROFILES_DIR, parse_form
    from fhir_adapter.server import create_app
    from fhir_adapter.store import Store

    store = Store.open(f"sqlite:///{sys.argv[1]}")
    service = ConsentService(store)
    form = parse_form(json.loads((PROFILES_DIR / "examples" / "form-competent-under-16.json").read_text()))
    service.create(form, actor="portability")
    inside_the_choice = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
    verdict = service.decide(DecisionRequest(form.young_person.nhs_number, Recipient(role="mother"), ("attendance",), "TREAT",
                                             at=inside_the_choice), actor="portability")
    app = create_app(store=store)
    from fhir_adapter.serving import ServingLimits, create_server
    create_server(app, "127.0.0.1", 0, ServingLimits()).close()
    audited = [r.action for r in store.audit_log(actor="portability")]
    store.close()
    print(verdict.decision, audited.count("decision"))
""")


def test_the_package_imports_decides_and_serves_on_the_embedded_store_without_posix_only_calls(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_POSIX_ONLY_CALLS, str(tmp_path / "casus.db")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["permit", "1"]
