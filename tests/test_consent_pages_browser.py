"""The consent pages in a real browser (headless Chromium): record, change, conflict, withdraw, the young person's
summary, keyboard use, and axe-core finding no serious accessibility violation on any of them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from fhir_adapter.config import Settings
from fhir_adapter.form import parse_form
from fhir_adapter.server import create_app
from fhir_adapter.store import Store
from tests.support.browser import Browser, LiveServer, open_browser
from tests.support.facade import EXAMPLES, TOKENS, bearer, example_form, grants

NEW_NHS = "9000000009"
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    store = Store.open(f"sqlite:///{tmp_path_factory.mktemp('pages')}/casus.db")
    app = create_app(Settings(grants=grants()), store=store)
    for path in sorted(EXAMPLES.glob("form-*.json")):
        app.extensions["casus"].create(parse_form(json.loads(path.read_text(encoding="utf-8"))), actor="loader")
    with LiveServer(app) as live:
        yield live
    store.close()


@pytest.fixture(scope="module")
def browser(server: LiveServer) -> Iterator[Browser]:
    opened = open_browser()
    found = next(opened)
    driver = found.driver
    driver.get(f"{server.base}/consent/")
    assert driver.current_url.startswith(f"{server.base}/consent/sign-in")
    assert found.serious_violations() == []
    found.screenshot("sign-in")
    driver.find_element("id", "token").send_keys(TOKENS["clinician"])
    submit(found, driver.find_element("css selector", "form.panel:last-of-type button[type=submit]"))
    assert driver.find_element("tag name", "h1").text == "Find a young person"
    yield found
    opened.close()


def decision(server: LiveServer, nhs: str, role: str, information_type: str = "attendance") -> str:
    answer = requests.get(
        f"{server.base}/api/decision",
        headers=bearer("ehr"),
        timeout=10,
        params={"patient": nhs, "recipient-role": role, "information-type": information_type, "purpose": "TREAT"},
    )
    return answer.json()["decision"]


def by_id(browser: Browser, element_id: str) -> Any:
    return browser.driver.find_element("id", element_id)


def set_date(browser: Browser, element_id: str, iso: str) -> None:
    """Date inputs take the locale's typing order; setting the value is what any locale's picker ends with."""
    browser.driver.execute_script("arguments[0].value = arguments[1];", by_id(browser, element_id), iso)


def click_button(browser: Browser, text: str) -> None:
    """Click a button that submits its form, and wait until the answer has replaced the page."""
    submit(browser, browser.driver.find_element("xpath", f"//button[normalize-space()={json.dumps(text)}]"))


def submit(browser: Browser, button: Any) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.wait import WebDriverWait

    page = browser.driver.find_element("tag name", "html")
    button.click()

    def replaced(_driver: Any) -> bool:
        # The old page's root is gone once the answer has replaced it. Chromium reports that as a stale element,
        # or, caught mid-navigation, as "Node with given id does not belong to the document".
        try:
            page.is_enabled()
        except WebDriverException:
            return True
        return False

    WebDriverWait(browser.driver, 10).until(replaced)


def heading(browser: Browser) -> str:
    return browser.driver.find_element("tag name", "h1").text


def test_the_session_cookie_is_secure_httponly_and_strict(browser: Browser) -> None:
    cookie = browser.driver.get_cookie("casus_session")
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_a_mistyped_nhs_number_is_flagged_as_typed_and_explained_at_its_field(browser: Browser, server: LiveServer) -> None:
    browser.driver.get(f"{server.base}/consent/")
    field = by_id(browser, "nhs-number")
    field.send_keys("943 476 5918")
    assert "Not a valid NHS number" in by_id(browser, "nhs-number-live").text
    click_button(browser, "Find")
    assert "This is not a valid NHS number" in by_id(browser, "nhs-number-error").text
    assert browser.serious_violations() == []
    browser.screenshot("find-error")


def test_the_consent_page_shows_who_may_know_what(browser: Browser, server: LiveServer) -> None:
    browser.driver.get(f"{server.base}/consent/")
    by_id(browser, "nhs-number").send_keys("485 777 3457")
    click_button(browser, "Find")
    assert heading(browser) == "Jamie Young"
    assert "Dana Young, who has parental responsibility" in browser.driver.page_source
    assert browser.serious_violations() == []
    browser.screenshot("consent")


def test_recording_a_consent_through_the_page_makes_the_decision_permit(browser: Browser, server: LiveServer) -> None:
    browser.driver.get(f"{server.base}/consent/patients/{NEW_NHS}")
    browser.driver.find_element("link text", "Record a consent").click()
    by_id(browser, "yp-name").send_keys("Nova Test")
    set_date(browser, "yp-birthDate", "2009-04-01")
    by_id(browser, "basis-aged-16-17").click()
    by_id(browser, "p-0-name").send_keys("Mo Test")
    by_id(browser, "p-0-role").send_keys("mother")
    by_id(browser, "p-0-share").click()
    click_button(browser, "Save and make active")  # nothing ticked and the exceptions not explained: two messages
    assert "a share person must list at least one information type" in by_id(browser, "p-0-types-error").text
    assert "the exceptions were explained" in by_id(browser, "exceptions-explained-error").text
    assert browser.serious_violations() == []
    browser.screenshot("record-errors")
    by_id(browser, "p-0-type-attendance").click()
    by_id(browser, "exceptions-explained").click()
    click_button(browser, "Save and make active")
    assert "Saved: this consent is now in force" in browser.driver.page_source
    assert decision(server, NEW_NHS, "mother") == "permit"


def test_changing_a_choice_on_the_page_changes_the_decision(browser: Browser, server: LiveServer) -> None:
    nhs, form_id = "9434765919", "0b6c3f4e-2d1a-4c8b-9e7f-1a2b3c4d5e6f"
    assert decision(server, nhs, "mother") == "permit"
    browser.driver.get(f"{server.base}/consent/forms/{form_id}/edit")
    assert browser.serious_violations() == []
    browser.screenshot("change")
    by_id(browser, "p-0-type-attendance").click()  # mum keeps the treatment plan only
    click_button(browser, "Save and make active")
    assert decision(server, nhs, "mother") == "deny"
    assert decision(server, nhs, "mother", "treatment-plan") == "permit"
    assert "no longer attendance" in browser.driver.page_source  # the version history says what changed


def test_a_stale_page_is_told_what_changed_and_can_then_save(browser: Browser, server: LiveServer) -> None:
    nhs, form_id = "4010232137", "5d9e1f0a-7b3c-4e2d-8a6f-2c4e6a8b0d1f"
    browser.driver.get(f"{server.base}/consent/forms/{form_id}/edit")
    changed = example_form("aged-16-17-professional")
    changed["people"][3] = {**changed["people"][3], "sharing": "share", "informationTypes": ["attendance"]}
    put = requests.put(f"{server.base}/api/forms/{form_id}", json=changed, timeout=10, headers={**bearer("clinician"), "If-Match": 'W/"1"'})
    assert put.status_code == 200
    by_id(browser, "p-2-share").click()
    by_id(browser, "p-2-type-attendance").click()
    click_button(browser, "Save and make active")
    conflict = by_id(browser, "conflict").text
    assert "Someone else changed this consent" in conflict and "Max Carer (Carer (not a family member)): do-not-share → share" in conflict
    assert browser.serious_violations() == []
    browser.screenshot("conflict")
    click_button(browser, "Save and make active")  # having seen the change, save over it
    assert "Saved: this consent is now in force" in browser.driver.page_source
    assert decision(server, nhs, "school") == "permit"


def test_withdrawing_is_one_clear_action_and_stops_sharing(browser: Browser, server: LiveServer) -> None:
    nhs = "4857773457"
    assert decision(server, nhs, "guardian") == "permit"
    browser.driver.get(f"{server.base}/consent/patients/{nhs}")
    click_button(browser, "Withdraw this consent")
    assert "Consent withdrawn" in browser.driver.page_source
    assert decision(server, nhs, "guardian") == "deny"


def test_the_young_persons_summary_reads_in_plain_english_and_prints_without_the_page_furniture(browser: Browser, server: LiveServer) -> None:
    form = example_form()
    form["formId"], form["youngPerson"]["nhsNumber"] = str(uuid.uuid4()), "9000000017"
    assert requests.post(f"{server.base}/api/forms", json=form, headers=bearer("clinician"), timeout=10).status_code == 201
    browser.driver.get(f"{server.base}/consent/patients/9000000017/summary")
    text = browser.driver.find_element("tag name", "main").text
    assert "Your mum (Pat Example) can know when you come to appointments and your treatment plan, until 20 May 2027." in text
    assert "Your dad (Chris Example) won't be told anything." in text
    assert "If we believe you or another person is at risk of significant harm." in text
    assert browser.serious_violations() == []
    browser.screenshot("summary")
    browser.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        assert not browser.driver.find_element("css selector", "header.header").is_displayed()
        assert browser.driver.find_element("css selector", "p.print-only").is_displayed()
    finally:
        browser.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})


def test_the_keyboard_reaches_the_skip_link_first_and_it_moves_focus_to_the_content(browser: Browser, server: LiveServer) -> None:
    from selenium.webdriver.common.keys import Keys

    browser.driver.get(f"{server.base}/consent/")
    browser.driver.find_element("tag name", "body").send_keys(Keys.TAB)
    focused = browser.driver.switch_to.active_element
    assert focused.text == "Skip to main content" and focused.is_displayed()
    assert focused.value_of_css_property("outline-style") == "solid"
    focused.send_keys(Keys.ENTER)
    assert browser.driver.switch_to.active_element.get_attribute("id") == "main"


def test_the_accessibility_check_finds_a_serious_violation_when_there_is_one(browser: Browser) -> None:
    browser.driver.get("data:text/html,<!DOCTYPE html><html lang=en><title>t</title><main><input type=text></main></html>")
    assert any(line.startswith("label (critical)") for line in browser.serious_violations())


def test_screenshots_named_in_the_docs_exist() -> None:
    docs = Path(__file__).resolve().parents[1] / "docs"
    named = [line.split("(images/")[1].split(")")[0] for line in (docs / "consent-pages.md").read_text().splitlines() if "(images/" in line]
    assert named and all((docs / "images" / name).is_file() for name in named)
