"""Disclosures made under a policy exception (risk of serious harm, a legal duty): kept so they can be listed and told.

The audit trail gets the disclosure's id, the exception code and the form id, in the same transaction as the
record itself; never its content.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Row, insert, select

from ..disclosure import Disclosure, disclosure_issues
from ..outcome import InvalidInput
from . import schema
from .audit import AuditTrail
from .engine import Database, dumps, require_actor

#: The audit action the store writes itself, inside the transaction that records a disclosure.
STORED_DISCLOSURE = "store.disclosure"


def _to_json(d: Disclosure) -> dict[str, Any]:
    return {
        "nhsNumber": d.nhs_number,
        "formId": d.form_id,
        "exception": d.exception,
        "informationTypes": list(d.information_types),
        "recipient": dict(d.recipient),
        "reason": d.reason,
        "disclosedAt": d.disclosed_at.isoformat(),
        "youngPersonTold": d.young_person_told,
        "toldAt": d.told_at.isoformat() if d.told_at else None,
        "notToldReason": d.not_told_reason,
    }


def _from_row(row: Row[Any]) -> Disclosure:
    doc = json.loads(row.document)
    return Disclosure(
        id=row.id,
        nhs_number=doc["nhsNumber"],
        form_id=doc["formId"],
        exception=doc["exception"],
        information_types=tuple(doc["informationTypes"]),
        recipient=doc["recipient"],
        reason=doc["reason"],
        disclosed_at=datetime.fromisoformat(doc["disclosedAt"]),
        young_person_told=doc["youngPersonTold"],
        told_at=datetime.fromisoformat(doc["toldAt"]) if doc["toldAt"] else None,
        not_told_reason=doc["notToldReason"],
        recorded_at=row.recorded_at,
    )


class Disclosures:
    def __init__(self, db: Database, audit: AuditTrail) -> None:
        self._db = db
        self._audit = audit

    def record(self, d: Disclosure, *, actor: str) -> Disclosure:
        """Keep a disclosure; returns it with its new id and recorded_at. Raises InvalidInput (nothing stored) when incomplete."""
        require_actor(actor)
        issues = disclosure_issues(d)
        if issues:
            raise InvalidInput(issues)
        now = self._db.now()
        stored = replace(d, id=str(uuid.uuid4()), recorded_at=now, information_types=tuple(d.information_types), recipient=dict(d.recipient))
        with self._db.write() as conn:
            conn.execute(
                insert(schema.disclosures).values(
                    id=stored.id,
                    nhs_number=stored.nhs_number,
                    form_id=stored.form_id,
                    disclosed_at=stored.disclosed_at,
                    recorded_at=now,
                    actor=actor,
                    document=dumps(_to_json(stored)),
                )
            )
            self._audit.insert(
                conn,
                now,
                actor=actor,
                action=STORED_DISCLOSURE,
                subject=stored.nhs_number,
                resource=f"disclosure/{stored.id}",
                outcome="recorded",
                detail={"exception": stored.exception, "formId": stored.form_id, "informationTypeCount": len(stored.information_types)},
            )
        return stored

    def for_patient(self, nhs_number: str) -> list[Disclosure]:
        """Every disclosure recorded for one NHS number, in the order they were made."""
        t = schema.disclosures
        query = select(t).where(t.c.nhs_number == nhs_number).order_by(t.c.disclosed_at, t.c.recorded_at, t.c.id)
        with self._db.read() as conn:
            return [_from_row(r) for r in conn.execute(query).all()]
