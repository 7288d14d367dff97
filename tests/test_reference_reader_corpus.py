"""The reference reader reads every public Consent example, R4 and R5, without crashing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CORPUS
from tests.reference_reader import ANSWERS, V3_ACT_REASON, Coding, Question, evaluate_r4, evaluate_r5

FILES = sorted(str(p.relative_to(CORPUS)) for p in CORPUS.glob("r[45]/*.json")) if CORPUS.is_dir() else []
MOMENTS = (datetime(2018, 6, 1, 12, tzinfo=UTC), datetime(2026, 6, 1, 12, tzinfo=UTC))


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def sample_questions(doc: Any) -> list[Question]:
    """Questions built from what the file itself names, so its provisions are exercised, plus generic ones."""
    actors = {"#mum"}
    purposes = {Coding(V3_ACT_REASON, "TREAT"), Coding(V3_ACT_REASON, "HMARKT")}
    infos = {Coding("http://loinc.org", "11506-3")}
    for node in _walk(doc):
        ref = node.get("reference")
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            actors.add(ref["reference"])
        for p in node.get("purpose", []) if isinstance(node.get("purpose"), list) else []:
            if isinstance(p, dict):
                purposes.add(Coding.of(p))
        for c in node.get("code", []) if isinstance(node.get("code"), list) else []:
            for coding in c.get("coding", []) if isinstance(c, dict) else []:
                if isinstance(coding, dict):
                    infos.add(Coding.of(coding))
    return [
        Question(actor=a, purpose=p, information_type=(i,), moment=m)
        for a in sorted(actors)[:4]
        for p in sorted(purposes, key=str)[:4]
        for i in sorted(infos, key=str)[:3]
        for m in MOMENTS
    ]


@pytest.mark.parametrize("name", FILES)
def test_reader_answers_every_sample_question_on_corpus_file(corpus_dir: Path, name: str) -> None:
    doc = json.loads((corpus_dir / name).read_text(encoding="utf-8"))
    evaluate = evaluate_r5 if name.startswith("r5/") else evaluate_r4
    for question in sample_questions(doc):
        result = evaluate(doc, question)
        assert result.answers and result.answers <= set(ANSWERS)
        assert result.answers == {r.answer for r in result.readings}
