"""Mapping throughput: CASUS form -> validated R4 Consent JSON and back, beside its floors.

Floors, measured in the same run on the same Consent JSON:
  * fhir.resources parsing the Consent JSON alone (R4B Consent.model_validate_json);
  * plain json.loads + json.dumps of it.
Target: each full mapping direction within 3x of the fhir.resources floor.

Two forward rows: the Consent checked by fhir.resources on every call, and the Consent as the facade and
sync send it -- built as plain data and not checked per call, because the mapping is valid by construction
(tests/test_mapping_by_construction.py checks every Consent it builds from generated forms against base FHIR
and the CASUS profile).  Target for the served path: at least 3x the fhir.resources floor's forms/s.  The
backward path always validates in full (a Consent from outside is untrusted), so it stays near the floor.

Run:  python benchmarks/bench_mapping.py [--forms 300] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from fhir.resources.R4B.consent import Consent

from fhir_adapter.form import (
    Competence,
    ConsentForm,
    DecisionMaker,
    Exceptions,
    Identifier,
    Organisation,
    Period,
    Person,
    Professional,
    Recorded,
    YoungPerson,
)
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.r4 import form_to_r4, r4_to_form

ROLES = codes.PERSON_ROLES.values()
TYPES = codes.INFORMATION_TYPES.values()


def realistic_form(n: int) -> ConsentForm:
    """A form shaped like a typical CASUS first meeting: six people, mixed choices, a few time limits."""
    recorded = datetime(2026, 11, 20, 10, 15, tzinfo=UTC) + timedelta(minutes=n)
    people = []
    for i in range(6):
        role = ROLES[(n + i) % len(ROLES)]
        professional = codes.PERSON_ROLES.row(role).kind == "professional"
        share = (n + i) % 3 != 0
        people.append(
            Person(
                id=f"p{i}",
                name=f"Person {i}",
                role=role,
                sharing="share" if share else "do-not-share",
                organisation=Organisation(f"Org {i}", "D81001") if professional else None,
                identifiers=(Identifier("gmc", "1234567"),) if professional else (),
                information_types=tuple(TYPES[(n + i + k) % len(TYPES)] for k in range(3)) if share else (),
                period=Period(date(2026, 11, 20), date(2027, 5, 20)) if i % 2 else None,
            )
        )
    return ConsentForm(
        form_id=str(uuid.UUID(int=n + 1, version=4)),
        status="active",
        young_person=YoungPerson("9434765919", "Young Person", date(2011, 3, 4), "CASUS-1"),
        recorded=Recorded(recorded, Professional("Clinician", (Identifier("nmc", "12A3456B"),))),
        decision_maker=DecisionMaker("competent-under-16", Competence(Professional("Assessor"), date(2026, 11, 20))),
        people=tuple(people),
        exceptions=Exceptions(True, date(2026, 11, 20)),
    )


def forward(form: ConsentForm) -> str:
    """Form -> R4 Consent dict -> checked by fhir.resources -> JSON text."""
    consent = form_to_r4(form)
    Consent.model_validate(consent)
    return json.dumps(consent)


def served(form: ConsentForm) -> str:
    """Form -> R4 Consent JSON text as the facade and sync send it (valid by construction, checked in tests)."""
    return json.dumps(form_to_r4(form))


def backward(text: str) -> ConsentForm:
    return r4_to_form(json.loads(text))


def rate(fn: Callable[[object], object], items: list, repeat: int) -> float:
    best = []
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best.append(len(items) / (time.perf_counter() - start))
    return statistics.median(best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forms", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    forms = [realistic_form(n) for n in range(args.forms)]
    texts = [forward(f) for f in forms]
    assert all(backward(t) == f for t, f in zip(texts, forms, strict=True)), "round trip failed"
    floor_fhir = rate(Consent.model_validate_json, texts, args.repeat)
    floor_json = rate(lambda t: json.dumps(json.loads(t)), texts, args.repeat)
    fwd = rate(forward, forms, args.repeat)
    sent = rate(served, forms, args.repeat)
    back = rate(backward, texts, args.repeat)
    rows = [
        ("floor: json.loads + json.dumps", floor_json, None),
        ("floor: fhir.resources parse (R4B Consent)", floor_fhir, None),
        ("form -> validated R4 Consent JSON", fwd, floor_fhir / fwd),
        ("form -> R4 Consent JSON as served", sent, floor_fhir / sent),
        ("R4 Consent JSON -> validated form", back, floor_fhir / back),
    ]
    print(f"forms: {args.forms}, median of {args.repeat} runs, mean Consent size {statistics.mean(map(len, texts)):.0f} bytes")
    print(f"| {'path':<44} | {'forms/s':>9} | {'x fhir.resources floor':>22} |")
    print(f"|{'-' * 46}|{'-' * 11}|{'-' * 24}|")
    for name, value, ratio in rows:
        shown = f"{ratio:.2f}x" if ratio is not None else "-"
        print(f"| {name:<44} | {value:>9.0f} | {shown:>22} |")
    worst = max(r for *_, r in rows if r is not None)
    print(f"target: within 3x of the fhir.resources floor -> {'MET' if worst <= 3 else 'NOT MET'} (worst {worst:.2f}x)")
    print(
        f"target: the served forward path >= 3x the fhir.resources floor's forms/s -> {'MET' if sent >= 3 * floor_fhir else 'NOT MET'} "
        f"({sent / floor_fhir:.1f}x)"
    )


if __name__ == "__main__":
    main()
