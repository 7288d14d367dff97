"""One consent form changed by many writers at once while decisions are asked: the pieces the concurrency test runs.

Writers do read-modify-write over HTTP with If-Match.  Each new version flips the mother's choice
(odd versions share attendance, even versions do not), so a decision computed from the wrong or a
half-written version shows up as a wrong permit/deny; each writer also adds an information type of
its own, so a write that was acknowledged but then lost (or overwritten) shows up as stored content
that differs from what was acknowledged.  ``writer_process`` runs in a child process with its own Store.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask.testing import FlaskClient

from fhir_adapter import decision
from fhir_adapter.form import form_to_json, parse_form
from fhir_adapter.mappings import codes
from fhir_adapter.store import Store
from fhir_adapter.store.forms import NotFound
from tests.support.facade import bearer

RECIPIENT_ROLE = "mother"
ASKED_TYPE = "attendance"
EXTRA_TYPES = tuple(t for t in codes.INFORMATION_TYPES.values() if t != ASKED_TYPE)
MAX_DECISIONS_PER_THREAD = 5_000  # deciders stop when the writers do, and never later than this


@dataclass(frozen=True)
class WriteResult:
    writer: str
    status: int
    expected_version: int
    stored_version: int | None  # the version the facade said it stored (200 only)
    sent: dict[str, Any] | None  # the form that was sent (200 only), to compare with what was stored


@dataclass(frozen=True)
class SeenVerdict:
    decision: str
    basis: str
    provision: str | None
    form_id: str | None
    version: int | None


def next_form(current: dict[str, Any], new_version: int, writer_index: int) -> dict[str, Any]:
    """The form a writer wants as ``new_version``: the mother's choice flipped by parity, plus the writer's own mark."""
    form = copy.deepcopy(current)
    for person in form["people"]:
        if person["role"] != RECIPIENT_ROLE:
            continue
        person.pop("period", None)  # no calendar edge: the answer depends on the version alone
        if new_version % 2:
            person["sharing"] = "share"
            person["informationTypes"] = [ASKED_TYPE, EXTRA_TYPES[writer_index % len(EXTRA_TYPES)]]
        else:
            person["sharing"] = "do-not-share"
            person.pop("informationTypes", None)
    return form


def read_version(client: FlaskClient, form_id: str) -> tuple[int, dict[str, Any]]:
    response = client.get(f"/api/forms/{form_id}", headers=bearer("clinician"))
    assert response.status_code == 200, response.status_code
    return response.json["version"], response.json["form"]


def write(client: FlaskClient, form_id: str, writer: str, writer_index: int, version: int, current: dict[str, Any]) -> WriteResult:
    """PUT the writer's next form at ``version``; 200 and 412 are the only answers a correct facade gives here."""
    body = next_form(current, version + 1, writer_index)
    response = client.put(f"/api/forms/{form_id}", json=body, headers={**bearer("clinician"), "If-Match": f'W/"{version}"'})
    stored = response.json.get("version") if response.status_code == 200 else None
    return WriteResult(writer, response.status_code, version, stored, body if response.status_code == 200 else None)


def writer_process(url: str, form_id: str, writer_index: int, attempts: int) -> list[WriteResult]:
    """A separate process with its own Store on the same database: read-modify-write ``attempts`` times."""
    from fhir_adapter.config import Settings
    from fhir_adapter.server import create_app
    from tests.support.facade import grants

    store = Store.open(url)
    try:
        client = create_app(Settings(grants=grants()), store=store).test_client()
        results = []
        for _ in range(attempts):
            version, current = read_version(client, form_id)
            results.append(write(client, form_id, f"process-{writer_index}", writer_index, version, current))
        return results
    finally:
        store.close()


def decision_query(nhs: str, at: datetime) -> dict[str, str]:
    return {"patient": nhs, "recipient-role": RECIPIENT_ROLE, "information-type": ASKED_TYPE, "purpose": "TREAT", "at": at.isoformat()}


def keep_deciding(client: FlaskClient, nhs: str, at: datetime, stop: threading.Event, seen: list[SeenVerdict]) -> None:
    """Ask the same question until the writers stop (bounded), keeping what each answer cited."""
    for _ in range(MAX_DECISIONS_PER_THREAD):
        if stop.is_set():
            return
        # A consent-reading caller: only its answers cite the version, which the check recomputes the verdict from.
        response = client.get("/api/decision", query_string=decision_query(nhs, at), headers=bearer("ehr"))
        body = response.json
        consent = body.get("consent") or {}
        seen.append(SeenVerdict(body["decision"], body["basis"], body.get("provision"), consent.get("formId"), consent.get("version")))


def inconsistent(store: Store, nhs: str, at: datetime, verdict: SeenVerdict) -> str | None:
    """Why a verdict is not what the engine gives for the exact version it cites, offline; None when it is."""
    if verdict.form_id is None or verdict.version is None:
        return "verdict cites no consent version"
    try:
        stored = store.get(verdict.form_id, verdict.version)
    except NotFound:
        return f"cited version {verdict.version} does not exist"
    request = decision.DecisionRequest(nhs, decision.Recipient(role=RECIPIENT_ROLE), (ASKED_TYPE,), "TREAT", at)
    again = decision.decide(request, [stored], now=at)
    recomputed = (again.decision, again.basis, again.provision, again.version)
    if recomputed != (verdict.decision, verdict.basis, verdict.provision, verdict.version):
        return f"version {verdict.version}: served {verdict} but recomputed {recomputed}"
    return None


def lost(store: Store, result: WriteResult) -> bool:
    """An acknowledged write whose content is not what the store holds at the version it was acknowledged as."""
    assert result.stored_version is not None and result.sent is not None
    try:
        stored = store.get(result.sent["formId"], result.stored_version)
    except NotFound:
        return True
    return form_to_json(stored.form) != form_to_json(parse_form(result.sent))
