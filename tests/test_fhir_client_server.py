"""The FHIR client against a real FHIR R4 server (sekmet-fhir) started by the suite on loopback.

Every test makes Consents with a fresh uuid formId (their business identifier), so tests sharing
the session server never see each other's data; the paging test, which counts everything, has a
server of its own.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from fhir_adapter.fhir_client import FhirClient, NotFound, PreconditionFailed, identifier_query
from fhir_adapter.form import parse_form
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.r4 import form_to_r4
from tests.support.facade import example_form
from tests.support.fhir_server import SekmetServer

pytestmark = pytest.mark.integration

SAMPLE: dict[str, Any] = example_form()  # the shipped example form, profiles/examples/form-competent-under-16.json


def new_consent(**changes: Any) -> dict[str, Any]:
    """An R4 Consent from the sample form with a fresh formId (and any top-level form changes)."""
    form = copy.deepcopy(SAMPLE)
    form.update(changes)
    form["formId"] = str(uuid.uuid4())
    return form_to_r4(parse_form(form))


def by_identifier(resource: dict[str, Any]) -> str:
    identifier = resource["identifier"][0]
    return identifier_query(identifier["system"], identifier["value"])


def find_by_identifier(client: FhirClient, resource: dict[str, Any]) -> list[dict[str, Any]]:
    identifier = resource["identifier"][0]
    return list(client.search("Consent", {"identifier": f"{identifier['system']}|{identifier['value']}"}))


@pytest.fixture
def client(fhir_server: SekmetServer) -> Iterator[FhirClient]:
    with FhirClient(fhir_server.base_url) as c:
        yield c


def test_server_describes_itself_as_fhir_r4(client: FhirClient) -> None:
    assert client.capabilities()["fhirVersion"] == "4.0.1"


def test_create_then_read_returns_the_stored_consent_and_its_version(client: FhirClient) -> None:
    created = client.create(new_consent())
    assert created.created and created.id
    resource, etag = client.read("Consent", created.id)
    assert resource["identifier"] == created.resource["identifier"]  # type: ignore[index]
    assert etag == 'W/"1"'


def test_vread_returns_an_earlier_version_after_an_update(client: FhirClient) -> None:
    created = client.create(new_consent())
    assert created.resource is not None
    changed = {**created.resource, "status": "inactive"}
    client.update(changed, if_match=created.etag)
    first, etag = client.vread("Consent", created.resource["id"], "1")
    assert (first["status"], etag) == ("active", 'W/"1"')


def test_update_with_the_current_version_succeeds_and_bumps_it(client: FhirClient) -> None:
    created = client.create(new_consent())
    assert created.resource is not None
    updated = client.update({**created.resource, "status": "inactive"}, if_match=created.etag)
    assert (updated.status, updated.version_id) == (200, "2")


def test_update_with_a_stale_version_is_refused_as_precondition_failed(client: FhirClient) -> None:
    created = client.create(new_consent())
    assert created.resource is not None
    client.update({**created.resource, "status": "inactive"}, if_match="1")
    with pytest.raises(PreconditionFailed) as caught:
        client.update({**created.resource, "status": "rejected"}, if_match="1")
    assert caught.value.outcome is not None
    assert client.read("Consent", created.resource["id"])[0]["status"] == "inactive"


def test_conditional_create_twice_makes_one_resource(client: FhirClient) -> None:
    consent = new_consent()
    first = client.create(consent, if_none_exist=by_identifier(consent))
    second = client.create(consent, if_none_exist=by_identifier(consent))
    # The spec allows 200 OK with or without a body when the match exists; sekmet returns the body.
    assert (first.status, second.status) == (201, 200)
    assert second.id == first.id
    assert len(find_by_identifier(client, consent)) == 1


def test_conditional_update_by_identifier_creates_then_updates(client: FhirClient) -> None:
    consent = new_consent()
    created = client.conditional_update(consent, by_identifier(consent))
    updated = client.conditional_update({**consent, "status": "inactive"}, by_identifier(consent))
    assert (created.status, updated.status) == (201, 200)
    assert updated.id == created.id and updated.version_id == "2"
    assert [r["status"] for r in find_by_identifier(client, consent)] == ["inactive"]


def test_reading_a_deleted_consent_is_not_found(client: FhirClient) -> None:
    created = client.create(new_consent())
    assert created.id is not None
    client.delete("Consent", created.id)
    with pytest.raises(NotFound) as caught:
        client.read("Consent", created.id)
    assert caught.value.status == 410


def test_search_follows_next_links_over_more_than_one_page(fresh_fhir_server: SekmetServer) -> None:
    with FhirClient(fresh_fhir_server.base_url) as client:
        made = {client.create(new_consent()).id for _ in range(12)}
        pages = list(client.search_pages("Consent", {"_count": "5"}))
        found = [r["id"] for r in client.search("Consent", {"_count": "5"})]
    assert [len(p.get("entry", [])) for p in pages] == [5, 5, 2]
    assert sorted(found) == sorted(made) and len(found) == 12


def test_transaction_bundle_writes_all_entries_and_reports_each(client: FhirClient) -> None:
    by_post, by_put = new_consent(), new_consent()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": by_post,
                "request": {"method": "POST", "url": "Consent", "ifNoneExist": by_identifier(by_post)},
            },
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": by_put, "request": {"method": "PUT", "url": f"Consent?{by_identifier(by_put)}"}},
        ],
    }
    response = client.transaction(bundle)
    assert response["type"] == "transaction-response"
    assert [e["response"]["status"].split()[0] for e in response["entry"]] == ["201", "201"]
    assert len(find_by_identifier(client, by_post)) == len(find_by_identifier(client, by_put)) == 1


def test_consents_are_stored_under_the_casus_form_identifier_system(client: FhirClient) -> None:
    consent = new_consent()
    client.create(consent)
    assert [r["identifier"][0]["system"] for r in find_by_identifier(client, consent)] == [codes.ID_CONSENT_FORM]


def test_data_survives_a_server_restart(fresh_fhir_server: SekmetServer) -> None:
    with FhirClient(fresh_fhir_server.base_url) as client:
        created = client.create(new_consent())
    fresh_fhir_server.restart()
    with FhirClient(fresh_fhir_server.base_url) as client:
        assert created.id is not None
        assert client.read("Consent", created.id)[1] == 'W/"1"'
