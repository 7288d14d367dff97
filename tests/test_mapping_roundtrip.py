"""Property tests: the mappings lose nothing a CASUS form holds."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings

from fhir_adapter.fhir_structure import base_issues
from fhir_adapter.form import cross_field_issues, form_to_json, parse_form
from fhir_adapter.mappings.cross_version import r4_to_r5, r5_to_r4
from fhir_adapter.mappings.r4 import form_to_r4, r4_to_form
from fhir_adapter.mappings.r5 import form_to_r5, r5_to_form

from .strategies import consent_forms

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _over_the_wire(resource: dict) -> dict:
    return json.loads(json.dumps(resource))


@SETTINGS
@given(consent_forms())
def test_generated_forms_are_valid(form):
    assert cross_field_issues(form) == []


@SETTINGS
@given(consent_forms())
def test_form_json_round_trip_is_identity(form):
    assert parse_form(_over_the_wire(form_to_json(form))) == form


@SETTINGS
@given(consent_forms())
def test_form_to_r4_to_form_is_identity(form):
    assert r4_to_form(_over_the_wire(form_to_r4(form))) == form


@SETTINGS
@given(consent_forms())
def test_form_to_r5_to_form_is_identity(form):
    assert r5_to_form(_over_the_wire(form_to_r5(form))) == form


@SETTINGS
@given(consent_forms())
def test_every_mapped_consent_is_base_fhir_valid(form):
    assert base_issues(form_to_r4(form), "r4") == []
    assert base_issues(form_to_r5(form), "r5") == []


@SETTINGS
@given(consent_forms())
def test_r4_to_r5_to_r4_preserves_meaning(form):
    r4 = form_to_r4(form)
    back = r5_to_r4(_over_the_wire(r4_to_r5(_over_the_wire(r4))))
    assert back == r4
    assert r4_to_form(back) == form
