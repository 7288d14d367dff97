"""The fast schema check accepts exactly what the reference validator (jsonschema) accepts.

The store re-reads every stored version through ``parse_form``, so the compiled check is what keeps
decisions on patients not yet cached and bulk loads cheap; a form it accepted that jsonschema rejects
would let a document past the published contract, so its yes/no is held to jsonschema's.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_adapter.form import _fast_validator, _validator, form_to_json, schema_issues
from tests.hardening.corruption import get, missing_element, paths, replaced, unknown_code, wrong_type
from tests.strategies import consent_forms

#: Characters where Python's and Rust's regular expressions disagree (which are white space, what `$` allows before it).
EDGE_CHARACTERS = ("\n", "\x1c", "\x1f", "\x85", "\xa0", "\u200b", "\u2028", "\u3000", "\t", " ", "\u0660")


def _reference_accepts(document: Any) -> bool:
    return _validator().is_valid(document)


@settings(max_examples=60, deadline=None)
@given(form=consent_forms(), data=st.data())
def test_fast_check_agrees_with_jsonschema_on_valid_and_broken_forms(form: Any, data: st.DataObject) -> None:
    document = form_to_json(form)
    body = data.draw(
        st.one_of(
            st.just(json.dumps(document).encode()),
            wrong_type(document).map(lambda kb: kb[1]),
            missing_element(document).map(lambda kb: kb[1]),
            unknown_code(document).map(lambda kb: kb[1]),
        )
    )
    candidate = json.loads(body)
    assert _fast_validator().is_valid(candidate) == _reference_accepts(candidate)


@settings(max_examples=60, deadline=None)
@given(form=consent_forms(), data=st.data())
def test_fast_check_judges_pattern_edge_characters_as_python_does(form: Any, data: st.DataObject) -> None:
    document = form_to_json(form)
    path = data.draw(st.sampled_from([p for p in paths(document) if isinstance(get(document, p), str)]))
    edge = data.draw(st.sampled_from(EDGE_CHARACTERS))
    where = data.draw(st.sampled_from(["start", "end", "only"]))
    value = get(document, path)
    candidate = replaced(document, path, edge + value if where == "start" else value + edge if where == "end" else edge)
    assert _fast_validator().is_valid(candidate) == _reference_accepts(candidate)


@pytest.mark.parametrize("value", [10**40, float("inf"), {"formId": "\ud800"}])
def test_values_the_fast_check_cannot_take_are_left_to_the_reference_validator(value: Any) -> None:
    assert schema_issues(value)  # named by jsonschema, not raised
