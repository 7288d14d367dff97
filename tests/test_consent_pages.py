"""The consent pages, server side: sign-in and sessions, finding a young person, every rule shown at its field,
the version check, withdrawal, proposals, the young person's summary and the audit trail."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from html import unescape
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict
from werkzeug.security import generate_password_hash

from fhir_adapter.access import PasswordUser
from fhir_adapter.config import Settings
from fhir_adapter.facade import consent_form_fields as fields
from fhir_adapter.facade import sessions
from fhir_adapter.form import parse_form
from fhir_adapter.outcome import InvalidInput
from fhir_adapter.server import create_app
from tests.support.facade import TOKENS, bearer, example_form, grants
from tests.support.pages import csrf_of, form_fields, sign_in

FORM_ID = "0b6c3f4e-2d1a-4c8b-9e7f-1a2b3c4d5e6f"
NHS = "9434765919"  # Alex Example: mum shares attendance and treatment plan, the GP medication, dad nothing
NEW_NHS = "4010232137"


@pytest.fixture
def signed_in(client):
    client.post("/api/forms", json=example_form(), headers=bearer("clinician"))
    sign_in(client)
    return client


def years_ago(years: int, days: int = 0) -> str:
    today = date.today()
    return (today.replace(year=today.year - years) - timedelta(days=days)).isoformat()


def new_page(client, nhs: str = NEW_NHS) -> dict[str, list[str]]:
    page = client.get(f"/consent/patients/{nhs}/new")
    action = re.search(r'<form method="post" action="(/consent/forms/[^"]+)"', page.text).group(1)
    return {"__action__": [action], **form_fields(page.text, action)}


def filled(client, **changes: Any) -> dict[str, Any]:
    """A new consent for a 17-year-old sharing attendance with mum, with ``changes`` (None removes a field)."""
    fields: dict[str, Any] = new_page(client)
    fields.update(
        {
            "yp-name": "Nova Test",
            "yp-birthDate": years_ago(17),
            "basis": "aged-16-17",
            "exceptions-explained": "1",
            "p-0-name": "Mo Test",
            "p-0-role": "mother",
            "p-0-sharing": "share",
            "p-0-types": ["attendance"],
            "action": "active",
        }
    )
    for key, value in changes.items():
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    return fields


def post(client, fields: dict[str, Any]):
    action = fields.pop("__action__")[0]
    return client.post(action, data=fields)


def error_at(html: str, field: str) -> list[str]:
    pattern = rf'<p class="error-message" id="{re.escape(field)}-error"><span class="visually-hidden">Error:</span> ([^<]*)</p>'
    return [unescape(m) for m in re.findall(pattern, html)]


def decision(client, role: str = "mother", information_type: str = "attendance", nhs: str = NHS) -> str:
    return client.get(
        "/api/decision",
        headers=bearer("ehr"),
        query_string={"patient": nhs, "recipient-role": role, "information-type": information_type, "purpose": "TREAT"},
    ).json["decision"]


# --------------------------------------------------------------------------- sign-in and sessions


def test_every_page_but_sign_in_and_its_stylesheet_needs_a_signed_in_session(app):
    client = app.test_client()
    open_to_all = {"pages.sign_in_page", "pages.sign_in", "pages.static"}
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("pages.") or rule.endpoint in open_to_all:
            continue
        assert hasattr(app.view_functions[rule.endpoint], "session_scope"), rule.endpoint
        path = re.sub(r"<([a-z_]+)>", lambda m: NHS if m.group(1) == "nhs_number" else FORM_ID, rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            response = client.open(path, method=method)
            assert response.status_code == 303 and response.headers["Location"].startswith("/consent/sign-in"), (method, path)


def test_a_page_asked_for_without_a_session_sends_the_browser_to_sign_in_and_back(client):
    response = client.get(f"/consent/patients/{NHS}")
    assert response.status_code == 303
    assert response.headers["Location"] == f"/consent/sign-in?next=/consent/patients/{NHS}"


def test_an_api_token_is_exchanged_for_a_secure_httponly_samesite_session_cookie(client):
    page = client.get("/consent/sign-in")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    response = client.post("/consent/sign-in", data={"csrf_token": csrf, "token": TOKENS["clinician"]})
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith(f"{sessions.COOKIE}="))
    assert {"Secure", "HttpOnly", "SameSite=Strict", "Path=/consent"} <= {part.strip() for part in cookie.split(";")}
    assert TOKENS["clinician"] not in cookie


def test_a_configured_user_signs_in_with_their_password(store):
    user = PasswordUser("jo", "Jo Clinician", generate_password_hash("correct horse battery"), frozenset({"consent.read"}))
    client = create_app(Settings(grants=grants(), users=(user,)), store=store).test_client()
    page = client.get("/consent/sign-in").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = client.post("/consent/sign-in", data={"csrf_token": csrf, "username": "jo", "password": "correct horse battery"})
    assert response.status_code == 303
    assert "Signed in as Jo Clinician" in client.get("/consent/").text


def test_a_wrong_password_is_refused_without_saying_whether_the_user_exists(store):
    user = PasswordUser("jo", "Jo", generate_password_hash("right"), frozenset({"consent.read"}))
    client = create_app(Settings(users=(user,)), store=store).test_client()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/consent/sign-in").text).group(1)
    wrong_password = client.post("/consent/sign-in", data={"csrf_token": csrf, "username": "jo", "password": "wrong"})
    no_such_user = client.post("/consent/sign-in", data={"csrf_token": csrf, "username": "kim", "password": "wrong"})
    assert wrong_password.status_code == no_such_user.status_code == 401
    assert "not recognised" in wrong_password.text and "not recognised" in no_such_user.text


def test_a_sign_in_post_without_the_forms_csrf_token_is_refused(client):
    client.get("/consent/sign-in")
    response = client.post("/consent/sign-in", data={"csrf_token": "made-up", "token": TOKENS["clinician"]})
    assert response.status_code == 400
    assert client.get("/consent/").status_code == 303


def test_a_change_posted_without_the_sessions_csrf_token_is_refused_and_changes_nothing(signed_in):
    response = signed_in.post(f"/consent/forms/{FORM_ID}/withdraw", data={"version": "1", "csrf_token": "forged"})
    assert response.status_code == 400
    assert decision(signed_in) == "permit"


def test_signing_out_ends_the_session_for_good(signed_in):
    cookie = signed_in.get_cookie(sessions.COOKIE, path="/consent").value
    signed_in.post("/consent/sign-out", data={"csrf_token": csrf_of(signed_in)})
    signed_in.set_cookie(sessions.COOKIE, cookie, path="/consent")
    assert signed_in.get("/consent/").status_code == 303


def test_a_reader_without_the_write_permission_cannot_open_the_change_page(client):
    client.post("/api/forms", json=example_form(), headers=bearer("clinician"))
    sign_in(client, "ehr")
    assert client.get(f"/consent/forms/{FORM_ID}/edit").status_code == 403


def test_an_account_that_may_not_read_consents_cannot_sign_in(client):
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/consent/sign-in").text).group(1)
    response = client.post("/consent/sign-in", data={"csrf_token": csrf, "token": TOKENS["engineer"]})
    assert response.status_code == 403 and "may not read consents" in response.text
    assert client.get("/consent/").status_code == 303


def test_after_sign_in_the_browser_goes_only_to_a_consent_page(client):
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/consent/sign-in").text).group(1)
    response = client.post("/consent/sign-in", data={"csrf_token": csrf, "token": TOKENS["clinician"], "next": "//evil.example/"})
    assert response.headers["Location"] == "/consent/"


def test_sign_ins_and_page_views_are_audited_with_the_signed_in_name(signed_in, store):
    signed_in.get(f"/consent/patients/{NHS}")
    records = store.audit_log(actor="clinician", limit=50)
    actions = {r.action for r in records}
    assert {"session.sign-in", "form.search", "form.history", "decision.summary"} <= actions
    assert all(r.subject in (None, NHS) for r in records)


def test_the_access_log_names_the_signed_in_user_and_only_the_route_template(signed_in, caplog):
    with caplog.at_level("INFO", logger="fhir_adapter.http"):
        signed_in.get(f"/consent/patients/{NHS}")
    line = next(r.getMessage() for r in caplog.records if r.name == "fhir_adapter.http")
    assert "GET /consent/patients/<nhs_number> -> 200" in line and "by=clinician" in line and NHS not in line


def test_the_pages_allow_their_own_stylesheet_and_script_and_nothing_from_elsewhere(signed_in):
    response = signed_in.get("/consent/")
    policy = response.headers.getlist("Content-Security-Policy")
    assert policy == [
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ]
    assert signed_in.get("/consent/static/consent.css").status_code == 200


# --------------------------------------------------------------------------- finding a young person


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("", "Enter the young person's NHS number"),
        ("94347659", "An NHS number is 10 digits"),
        ("94347659AB", "An NHS number is 10 digits"),
        ("943 476 5918", "This is not a valid NHS number"),
    ],
)
def test_an_nhs_number_that_is_not_valid_is_explained_at_its_field(signed_in, typed, message):
    response = signed_in.get("/consent/", query_string={"nhs-number": typed})
    assert response.status_code == 400
    assert message in error_at(response.text, "nhs-number")[0]


def test_a_valid_nhs_number_typed_with_spaces_finds_the_young_person(signed_in):
    response = signed_in.get("/consent/", query_string={"nhs-number": "943 476 5919"})
    assert response.headers["Location"] == f"/consent/patients/{NHS}"


def test_the_consent_page_shows_who_may_know_what_the_decider_and_the_history(signed_in):
    page = signed_in.get(f"/consent/patients/{NHS}").text
    assert "Alex Example" in page
    assert "assessed as competent by Dr Sam Assessor" in page
    mum_row = re.search(r"<tr>\s*<th scope=\"row\">Pat Example.*?</tr>", page, re.S).group(0)
    assert mum_row.count("✓ Yes") == 2 and "until 20 May 2027" in mum_row
    dad_row = re.search(r"<tr>\s*<th scope=\"row\">Chris Example.*?</tr>", page, re.S).group(0)
    assert "Do not share" in dad_row and "✓ Yes" not in dad_row
    assert "Version 1" in page and "First recorded (active), with 3 people." in page


def test_a_young_person_with_no_consent_is_offered_a_new_one(signed_in):
    page = signed_in.get(f"/consent/patients/{NEW_NHS}").text
    assert "No consent recorded" in page and f"/consent/patients/{NEW_NHS}/new" in page


def test_a_parental_consent_of_a_young_person_now_16_is_flagged_for_review(signed_in):
    form = example_form("parental-responsibility")
    form["youngPerson"]["birthDate"] = years_ago(16, days=10)
    form["recorded"]["date"] = (datetime.now(UTC) - timedelta(days=30)).isoformat(timespec="seconds")
    form["exceptions"]["explainedOn"] = form["recorded"]["date"][:10]
    signed_in.post("/api/forms", json=form, headers=bearer("clinician"))
    page = signed_in.get(f"/consent/patients/{form['youngPerson']['nhsNumber']}").text
    assert "They are now 16" in page


def test_a_consent_of_a_young_person_now_18_is_flagged_for_review(signed_in):
    form = example_form("aged-16-17-professional")
    form["youngPerson"]["birthDate"] = years_ago(18, days=10)  # 17 when recorded a month ago, 18 for ten days now
    form["recorded"]["date"] = (datetime.now(UTC) - timedelta(days=30)).isoformat(timespec="seconds")
    form["exceptions"]["explainedOn"] = form["recorded"]["date"][:10]
    signed_in.post("/api/forms", json=form, headers=bearer("clinician"))
    page = signed_in.get(f"/consent/patients/{form['youngPerson']['nhsNumber']}").text
    assert "They are now 18" in page


# --------------------------------------------------------------------------- recording and changing


def test_recording_a_consent_through_the_page_makes_the_decision_permit(signed_in):
    response = post(signed_in, filled(signed_in))
    assert response.status_code == 303
    assert decision(signed_in, nhs=NEW_NHS) == "permit"


def test_saving_as_a_proposal_changes_nothing_until_it_is_made_active(signed_in):
    fields = form_fields(signed_in.get(f"/consent/forms/{FORM_ID}/edit").text, f"/consent/forms/{FORM_ID}")
    fields.update({"p-2-sharing": ["share"], "p-2-types": ["attendance"], "action": ["draft"]})
    assert signed_in.post(f"/consent/forms/{FORM_ID}", data=fields).status_code == 303
    assert decision(signed_in, "father") == "deny"
    page = signed_in.get(f"/consent/patients/{NHS}").text
    assert "Pending proposal (version 2" in page
    assert "Chris Example (father): do-not-share → share; may now know attendance." in page
    signed_in.post(f"/consent/forms/{FORM_ID}/activate", data={"version": "2", "csrf_token": csrf_of(signed_in)})
    assert decision(signed_in, "father") == "permit"


def test_changing_a_choice_on_the_page_changes_the_decision(signed_in):
    assert decision(signed_in) == "permit"
    fields = form_fields(signed_in.get(f"/consent/forms/{FORM_ID}/edit").text, f"/consent/forms/{FORM_ID}")
    fields.update({"p-0-sharing": ["do-not-share"], "p-0-types": [], "action": ["active"]})
    assert signed_in.post(f"/consent/forms/{FORM_ID}", data=fields).status_code == 303
    assert decision(signed_in) == "deny"


def test_a_stale_page_is_told_who_changed_the_consent_and_what(signed_in):
    fields = form_fields(signed_in.get(f"/consent/forms/{FORM_ID}/edit").text, f"/consent/forms/{FORM_ID}")
    changed = example_form()
    changed["people"][2] = {**changed["people"][2], "sharing": "share", "informationTypes": ["attendance"]}
    signed_in.put(f"/api/forms/{FORM_ID}", json=changed, headers={**bearer("clinician"), "If-Match": 'W/"1"'})
    fields.update({"p-1-sharing": ["do-not-share"], "p-1-types": [], "action": ["active"]})
    response = signed_in.post(f"/consent/forms/{FORM_ID}", data=fields)
    assert response.status_code == 409
    assert "Someone else changed this consent" in response.text
    assert "Chris Example (father): do-not-share → share; may now know attendance." in response.text
    assert 'name="version" value="2"' in response.text
    assert decision(signed_in, "gp", "medication") == "permit"  # nothing of the stale page was saved


def test_a_new_consent_page_sent_twice_is_told_it_was_already_saved(signed_in):
    fields = filled(signed_in)
    post(signed_in, dict(fields))
    again = post(signed_in, fields)
    assert again.status_code == 409 and "Someone else changed this consent" in again.text
    assert 'name="version" value="1"' in again.text


def test_withdrawing_is_one_action_and_stops_sharing(signed_in):
    response = signed_in.post(f"/consent/forms/{FORM_ID}/withdraw", data={"version": "1", "csrf_token": csrf_of(signed_in)})
    assert response.status_code == 303
    assert decision(signed_in) == "deny"
    assert "Consent withdrawn" in signed_in.get(response.headers["Location"]).text


def test_withdrawing_from_a_stale_page_changes_nothing_and_says_so(signed_in):
    signed_in.post(f"/api/forms/{FORM_ID}/withdraw", headers={**bearer("clinician"), "If-Match": 'W/"1"'})
    response = signed_in.post(f"/consent/forms/{FORM_ID}/withdraw", data={"version": "1", "csrf_token": csrf_of(signed_in)})
    assert response.status_code == 409 and "Someone else changed this consent" in response.text


def test_adding_a_person_row_keeps_what_was_typed(signed_in):
    fields = filled(signed_in, action="add-person")
    page = post(signed_in, fields).text
    assert 'value="Mo Test"' in page and 'name="p-1-name"' in page and 'name="p-2-name"' in page


def test_a_page_shown_again_with_errors_keeps_one_empty_row_to_add_a_person(signed_in):
    page = post(signed_in, filled(signed_in, **{"yp-name": ""})).text
    assert 'name="rows" value="2"' in page


def test_signing_in_again_ends_the_earlier_session(signed_in):
    earlier = signed_in.get_cookie(sessions.COOKIE, path="/consent").value
    sign_in(signed_in)
    signed_in.set_cookie(sessions.COOKIE, earlier, path="/consent")
    assert signed_in.get("/consent/").status_code == 303


# Each rule the API enforces, at the field it concerns: (changes to a valid page, field id, words of the message).
RULES = [
    ({"yp-name": ""}, "yp-name", "a name is required"),
    ({"yp-birthDate": ""}, "yp-birthDate", "the date of birth is required"),
    ({"yp-birthDate": "2011-02-30"}, "yp-birthDate", "is not a calendar date"),
    ({"yp-birthDate": "11/02/2011"}, "yp-birthDate", "does not match"),
    ({"yp-birthDate": years_ago(19)}, "yp-birthDate", "CASUS consents are for under-18s"),
    ({"yp-birthDate": years_ago(-1)}, "yp-birthDate", "recorded before the young person's date of birth"),
    ({"yp-localId": " padded "}, "yp-localId", ""),  # stripped, so accepted: no error at all
    ({"basis": None}, "basis", "who decides is required"),
    ({"yp-birthDate": years_ago(13)}, "basis", "basis aged-16-17 but the young person was 13"),
    ({"yp-birthDate": years_ago(13), "basis": "competent-under-16"}, "competence-by", "the competence assessment is required"),
    (
        {"yp-birthDate": years_ago(13), "basis": "competent-under-16", "competence-on": date.today().isoformat()},
        "competence-by",
        "who assessed competence is required",
    ),
    (
        {
            "yp-birthDate": years_ago(13),
            "basis": "competent-under-16",
            "competence-by": "Dr Who",
            "competence-on": (date.today() + timedelta(days=2)).isoformat(),
        },
        "competence-on",
        "competence is assessed after the form was recorded",
    ),
    (
        {"yp-birthDate": years_ago(13), "basis": "parental-responsibility"},
        "decider",
        "the person with parental responsibility who decides is required",
    ),
    (
        {"yp-birthDate": years_ago(13), "basis": "parental-responsibility", "p-0-role": "sibling", "decider": "person-1"},
        "decider",
        "a sibling does not hold parental responsibility",
    ),
    ({"yp-birthDate": years_ago(15), "basis": "aged-16-17", "yp-name": "Nova Test"}, "basis", "basis aged-16-17 but the young person was 15"),
    (
        {"yp-birthDate": years_ago(16), "basis": "competent-under-16", "competence-by": "Dr A", "competence-on": years_ago(0)},
        "basis",
        "decides for themselves (aged-16-17)",
    ),
    ({"p-0-types": []}, "p-0-types", "a share person must list at least one information type"),
    ({"p-0-sharing": "do-not-share"}, "p-0-types", "a do-not-share person cannot list information types to share"),
    ({"p-0-sharing": None}, "p-0-sharing", "share or do not share is required"),
    ({"p-0-role": ""}, "p-0-role", "a role is required"),
    ({"p-0-name": ""}, "p-0-name", "a name is required"),
    ({"p-0-organisation": "Riverside Surgery"}, "p-0-organisation", "an organisation is recorded for professionals, not for a mother"),
    ({"p-0-role": "gp", "p-0-organisation": "Riverside Surgery", "p-0-ods": "D8-1001"}, "p-0-ods", "does not match"),
    ({"p-0-role": "gp", "p-0-ods": "D81001"}, "p-0-organisation", "a name is required"),
    ({"p-0-idsys": "gmc", "p-0-idval": "12 34"}, "p-0-idval", "does not match"),
    ({"p-0-idval": "1234567"}, "p-0-idval", "is not one of"),
    ({"p-0-start": "2027-05-01", "p-0-end": "2027-01-01"}, "p-0-start", "the period ends before it starts"),
    ({"p-0-end": "2027-13-01"}, "p-0-end", "is not a calendar date"),
    (
        {"p-1-id": "person-2", "p-1-name": "Mo Test", "p-1-role": "mother", "p-1-sharing": "do-not-share", "rows": "2"},
        "p-1-name",
        "the same person (mother) is listed twice",
    ),
    ({"exceptions-explained": None}, "exceptions-explained", "an active consent requires that the exceptions were explained"),
    (
        {"exceptions-explained": None, "exceptions-on": "2026-11-30", "action": "draft"},
        "exceptions-on",
        "an explanation date is given but explained is false",
    ),
    ({"exceptions-on": "soon"}, "exceptions-on", "does not match"),
    ({"recorded-by": ""}, "recorded-by", "a name is required"),
]


@pytest.mark.parametrize(("changes", "field", "words"), RULES, ids=[f"{r[1]}:{r[2][:40]}" for r in RULES])
def test_every_rule_the_api_enforces_is_shown_at_its_field(signed_in, changes, field, words):
    response = post(signed_in, filled(signed_in, **changes))
    if not words:
        assert response.status_code == 303, error_at(response.text, field)
        return
    assert response.status_code == 422
    messages = error_at(response.text, field)
    assert any(words in m for m in messages), (messages, re.findall(r'id="([^"]+)-error"', response.text))
    assert f'<a href="#{field}">' in response.text  # and in the summary at the top, linking to the field


def test_the_page_and_the_api_reject_the_same_form_with_the_same_messages(signed_in):
    """The page builds the API's document and has it checked by the same parser: no second copy of any rule."""
    posted = filled(signed_in, **{"p-0-types": [], "exceptions-explained": None})
    form_id = posted.pop("__action__")[0].rsplit("/", 1)[1]
    values = fields.values_from_post(MultiDict([(k, x) for k, v in posted.items() for x in (v if isinstance(v, list) else [v])]), form_id, NEW_NHS)
    document = fields.document(values, status="active", recorded_at=datetime.now(UTC).replace(microsecond=0))
    api = signed_in.post("/api/forms", json=document, headers=bearer("clinician")).json
    with pytest.raises(InvalidInput) as raised:
        parse_form(document)
    assert sorted(i["diagnostics"] for i in api["issue"]) == sorted(i.diagnostics for i in raised.value.issues)


# --------------------------------------------------------------------------- the young person's summary


def test_the_young_persons_summary_says_who_will_know_what_in_plain_english(signed_in):
    page = signed_in.get(f"/consent/patients/{NHS}/summary").text
    assert "Your mum (Pat Example) can know when you come to appointments and your treatment plan, until 20 May 2027." in page
    assert "Your dad (Chris Example) won&#39;t be told anything." in page
    assert "If we believe you or another person is at risk of significant harm." in page
    assert "If there is a court order for us to do so." in page


def test_after_withdrawal_the_summary_says_nobody_is_told_anything(signed_in):
    signed_in.post(f"/consent/forms/{FORM_ID}/withdraw", data={"version": "1", "csrf_token": csrf_of(signed_in)})
    page = signed_in.get(f"/consent/patients/{NHS}/summary").text
    assert "we won't tell anyone anything about you" in page and "Your mum" not in page


def test_the_summary_has_a_print_stylesheet(signed_in):
    css = signed_in.get("/consent/static/consent.css").text
    assert "@media print" in css


# --------------------------------------------------------------------------- hostile input


FIELD_NAMES = [
    "yp-name",
    "yp-birthDate",
    "yp-localId",
    "basis",
    "competence-by",
    "competence-on",
    "decider",
    "exceptions-on",
    "recorded-by",
    "rows",
    "version",
    "p-0-name",
    "p-0-role",
    "p-0-ods",
    "p-0-idsys",
    "p-0-idval",
    "p-0-sharing",
    "p-0-types",
    "p-0-start",
    "p-0-end",
    "p-0-id",
    "action",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(FIELD_NAMES), st.text(max_size=40) | st.sampled_from(["", "2027-02-30", "9" * 30, "-1"]), max_size=6))
def test_whatever_a_page_posts_the_answer_is_a_page_never_a_server_error(signed_in, changes):
    response = post(signed_in, filled(signed_in, **changes))
    assert response.status_code in (303, 400, 404, 409, 422), response.status_code
    assert response.mimetype == "text/html" or response.status_code == 303


@pytest.mark.parametrize("version", ["99999999999999999999999", "１", "-1", ""])
def test_a_withdrawal_naming_no_usable_version_is_refused_with_nothing_changed(signed_in, version):
    response = signed_in.post(f"/consent/forms/{FORM_ID}/withdraw", data={"version": version, "csrf_token": csrf_of(signed_in)})
    assert response.status_code == 400
    assert decision(signed_in) == "permit"


def test_a_change_naming_a_version_no_store_could_hold_is_not_a_server_error(signed_in):
    fields = form_fields(signed_in.get(f"/consent/forms/{FORM_ID}/edit").text, f"/consent/forms/{FORM_ID}")
    fields.update({"version": ["9" * 40], "action": ["active"]})
    assert signed_in.post(f"/consent/forms/{FORM_ID}", data=fields).status_code == 409  # read as a new consent: it exists
