"""The form -> Consent mappings are valid by construction: the facade and sync send what they build unchecked,
so every Consent they can build must pass base FHIR and the CASUS profile (checked here, not on every call)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from fhir_adapter.form import ConsentForm
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.r4 import form_to_r4
from fhir_adapter.mappings.r5 import form_to_r5
from fhir_adapter.validation import validate_consent

from .strategies import consent_forms

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def errors(issues: list) -> list:
    return [i for i in issues if i.severity in ("error", "fatal")]


@SETTINGS
@given(consent_forms())
def test_every_r4_consent_the_mapping_builds_passes_the_casus_profile(form: ConsentForm) -> None:
    assert errors(validate_consent(form_to_r4(form), "r4", profile=codes.PROFILE_CONSENT)) == []


@SETTINGS
@given(consent_forms())
def test_every_r5_consent_the_mapping_builds_passes_the_casus_profile(form: ConsentForm) -> None:
    assert errors(validate_consent(form_to_r5(form), "r5")) == []
