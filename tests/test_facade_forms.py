"""The CASUS-shaped form API over HTTP: create, read, update with If-Match, withdraw, history, list per patient."""

from __future__ import annotations

from tests.support.facade import bearer, example_form

FORM_ID = "0b6c3f4e-2d1a-4c8b-9e7f-1a2b3c4d5e6f"
NHS = "9434765919"


def create(client, form=None):
    return client.post("/api/forms", json=form or example_form(), headers=bearer("clinician"))


def test_creating_a_form_returns_201_with_version_1_etag_and_location(client):
    response = create(client)
    assert response.status_code == 201
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Location"].endswith(f"/api/forms/{FORM_ID}")
    assert response.json["version"] == 1
    assert response.json["form"] == example_form()


def test_reading_a_form_returns_the_latest_version_with_etag_and_last_modified(client):
    create(client)
    response = client.get(f"/api/forms/{FORM_ID}", headers=bearer("ehr"))
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Last-Modified"].endswith("GMT")


def test_updating_with_the_current_version_makes_a_new_version_and_keeps_the_old(client):
    create(client)
    changed = example_form()
    changed["people"][2] = {**changed["people"][2], "sharing": "share", "informationTypes": ["attendance"]}
    response = client.put(f"/api/forms/{FORM_ID}", json=changed, headers={**bearer("clinician"), "If-Match": 'W/"1"'})
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"2"'
    history = client.get(f"/api/forms/{FORM_ID}/history", headers=bearer("ehr")).json["versions"]
    assert [v["version"] for v in history] == [1, 2]
    assert history[0]["form"] == example_form()
    assert client.get(f"/api/forms/{FORM_ID}/versions/1", headers=bearer("ehr")).json["form"] == example_form()


def test_a_stale_update_gets_412_and_loses_nothing(client):
    create(client)
    first = example_form()
    first["people"][0]["informationTypes"] = ["attendance"]
    assert client.put(f"/api/forms/{FORM_ID}", json=first, headers={**bearer("clinician"), "If-Match": 'W/"1"'}).status_code == 200
    stale = example_form()
    stale["people"][1]["sharing"] = "do-not-share"
    del stale["people"][1]["informationTypes"]
    response = client.put(f"/api/forms/{FORM_ID}", json=stale, headers={**bearer("clinician"), "If-Match": 'W/"1"'})
    assert response.status_code == 412
    assert response.json["resourceType"] == "OperationOutcome"
    assert response.headers["ETag"] == 'W/"2"'
    current = client.get(f"/api/forms/{FORM_ID}", headers=bearer("ehr")).json
    assert current["version"] == 2 and current["form"] == first


def test_an_update_without_if_match_gets_428(client):
    create(client)
    response = client.put(f"/api/forms/{FORM_ID}", json=example_form(), headers=bearer("clinician"))
    assert response.status_code == 428
    assert response.json["issue"][0]["expression"] == ["If-Match"]


def test_a_malformed_if_match_gets_400(client):
    create(client)
    response = client.put(f"/api/forms/{FORM_ID}", json=example_form(), headers={**bearer("clinician"), "If-Match": "yesterday"})
    assert response.status_code == 400


def test_an_update_whose_body_names_another_form_gets_400(client):
    create(client)
    other = example_form()
    other["formId"] = "11111111-2222-4333-8444-555555555555"
    response = client.put(f"/api/forms/{FORM_ID}", json=other, headers={**bearer("clinician"), "If-Match": 'W/"1"'})
    assert response.status_code == 400
    assert response.json["issue"][0]["expression"] == ["formId"]


def test_creating_the_same_form_twice_gets_409(client):
    create(client)
    assert create(client).status_code == 409


def test_withdrawing_makes_a_withdrawn_version(client):
    create(client)
    response = client.post(f"/api/forms/{FORM_ID}/withdraw", headers={**bearer("clinician"), "If-Match": 'W/"1"'})
    assert response.status_code == 200
    assert response.json["form"]["status"] == "withdrawn" and response.json["version"] == 2


def test_forms_are_listed_per_patient(client):
    create(client)
    create(client, example_form("withdrawn"))
    response = client.get(f"/api/patients/{NHS}/forms", headers=bearer("ehr"))
    assert response.status_code == 200
    assert [f["formId"] for f in response.json["forms"]] == [FORM_ID]


def test_listing_for_an_invalid_nhs_number_gets_400(client):
    response = client.get("/api/patients/9434765918/forms", headers=bearer("ehr"))
    assert response.status_code == 400


def test_an_unknown_form_gets_404_as_operation_outcome(client):
    response = client.get("/api/forms/00000000-0000-4000-8000-000000000000", headers=bearer("ehr"))
    assert response.status_code == 404
    assert response.json["resourceType"] == "OperationOutcome"


def test_an_invalid_nhs_number_is_rejected_naming_the_field_and_nothing_is_stored(client, store):
    form = example_form()
    form["youngPerson"]["nhsNumber"] = "9434765918"
    response = create(client, form)
    assert response.status_code == 400
    assert response.json["issue"][0]["expression"] == ["$.youngPerson.nhsNumber"]
    assert store.search(limit=10, offset=0)[1] == 0


def test_wrong_types_are_rejected_naming_each_field(client, store):
    form = example_form()
    form["people"][0]["sharing"] = True
    form["exceptions"]["explained"] = "yes"
    response = create(client, form)
    assert response.status_code == 400
    assert {e for i in response.json["issue"] for e in i["expression"]} >= {"$.people[0].sharing", "$.exceptions.explained"}
    assert store.search(limit=10, offset=0)[1] == 0


def test_an_unknown_information_type_is_rejected(client):
    form = example_form()
    form["people"][0]["informationTypes"] = ["everything"]
    response = create(client, form)
    assert response.status_code == 400
    assert response.json["issue"][0]["expression"] == ["$.people[0].informationTypes[0]"]


def test_a_basis_that_does_not_fit_the_age_is_rejected(client):
    form = example_form()
    form["decisionMaker"] = {"basis": "aged-16-17"}
    response = create(client, form)
    assert response.status_code == 400
    assert response.json["issue"][0]["expression"] == ["$.decisionMaker.basis"]


def test_truncated_json_gets_400(client):
    response = client.post("/api/forms", data='{"formId": "0b6c', content_type="application/json", headers=bearer("clinician"))
    assert response.status_code == 400
    assert "not valid JSON" in response.json["issue"][0]["diagnostics"]


def test_non_utf8_body_gets_400(client):
    response = client.post("/api/forms", data=b'{"a": "\xff"}', content_type="application/json", headers=bearer("clinician"))
    assert response.status_code == 400


def test_a_body_over_the_limit_gets_413(client):
    response = client.post("/api/forms", data=b"[" + b"1," * 150_000 + b"1]", content_type="application/json", headers=bearer("clinician"))
    assert response.status_code == 413
    assert response.json["resourceType"] == "OperationOutcome"


def test_a_non_json_media_type_gets_415(client):
    response = client.post("/api/forms", data="formId=1", content_type="application/x-www-form-urlencoded", headers=bearer("clinician"))
    assert response.status_code == 415


def test_deeply_nested_json_gets_400(client):
    response = client.post("/api/forms", data="[" * 200 + "]" * 200, content_type="application/json", headers=bearer("clinician"))
    assert response.status_code == 400


BEYOND_BIGINT = "9223372036854775808"  # one more than the largest 64-bit version number a column can hold


def test_a_form_version_beyond_64_bits_is_not_found(client):
    create(client)
    response = client.get(f"/api/forms/{FORM_ID}/versions/{BEYOND_BIGINT}", headers=bearer("clinician"))
    assert response.status_code == 404
    assert response.json["resourceType"] == "OperationOutcome"


def test_an_if_match_beyond_64_bits_is_a_stale_version(client):
    create(client)
    response = client.put(f"/api/forms/{FORM_ID}", json=example_form(), headers={**bearer("clinician"), "If-Match": f'W/"{BEYOND_BIGINT}"'})
    assert response.status_code == 412
    assert response.json["resourceType"] == "OperationOutcome"
