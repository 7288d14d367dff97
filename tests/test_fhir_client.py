"""FHIR client edge cases against a mocked server (``responses``): retries, errors, paging, auth."""

from __future__ import annotations

import email.utils
import json
import logging
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jwt
import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fhir_adapter.fhir_auth import (
    CLIENT_ASSERTION_TYPE,
    NoAuth,
    SmartBackendAuth,
    StaticBearer,
    auth_from_env,
)
from fhir_adapter.fhir_client import (
    ConfigurationError,
    Conflict,
    FhirClient,
    FhirError,
    InvalidResource,
    MalformedResponse,
    NotFound,
    PreconditionFailed,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    backoff_delay,
    identifier_query,
    is_idempotent,
    parse_retry_after,
    redact_path,
)

BASE = "https://fhir.trust.test/fhir"
TOKEN_URL = "https://auth.trust.test/token"
FHIR_JSON = "application/fhir+json"


def outcome(code: str, diagnostics: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]}


def consent(resource_id: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Consent", "status": "active"}
    if resource_id:
        resource["id"] = resource_id
    return resource


def searchset(ids: list[str], next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "self", "url": f"{BASE}/Consent"}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"resource": consent(i), "search": {"mode": "match"}} for i in ids],
    }


class SleepRecorder:
    """Stands in for time.sleep: records the delays, never waits."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def sleeper() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def make_client(sleeper: SleepRecorder) -> Callable[..., FhirClient]:
    def build(**kwargs: Any) -> FhirClient:
        kwargs.setdefault("sleep", sleeper)
        kwargs.setdefault("rng", random.Random(7))
        return FhirClient(BASE, **kwargs)

    return build


@pytest.fixture
def client(make_client: Callable[..., FhirClient]) -> FhirClient:
    return make_client()


# --------------------------------------------------------------------------- transport security


def test_plain_http_to_a_remote_host_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="plain http"):
        FhirClient("http://fhir.trust.test/fhir")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8090/fhir", "http://127.8.9.10/fhir", "http://localhost/fhir", "http://[::1]:8090/fhir"])
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    assert FhirClient(url).base_url == url


def test_plain_http_to_a_remote_host_is_allowed_only_when_asked_for() -> None:
    assert FhirClient("http://fhir.trust.test/fhir", allow_insecure_http=True).base_url == "http://fhir.trust.test/fhir"


def test_a_host_merely_named_like_localhost_is_not_loopback() -> None:
    with pytest.raises(ConfigurationError):
        FhirClient("http://localhost.evil.test/fhir")


def test_tls_verification_is_on_by_default(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    client.capabilities()
    # True, or a CA bundle path when REQUESTS_CA_BUNDLE is set: either way certificates are checked.
    assert mocked.calls[0].request.req_kwargs["verify"] not in (False, None)


# --------------------------------------------------------------------------- request shape


def test_every_call_sends_fhir_json_accept_and_the_timeout(mocked: responses.RequestsMock, make_client: Callable[..., FhirClient]) -> None:
    client = make_client(timeout=(1.5, 9))
    mocked.get(f"{BASE}/Consent/c1", json=consent("c1"), headers={"ETag": 'W/"1"'})
    mocked.post(f"{BASE}/Consent", json=consent("c2"), status=201)
    client.read("Consent", "c1")
    client.create(consent())
    for call in mocked.calls:
        assert call.request.headers["Accept"] == FHIR_JSON
        assert call.request.req_kwargs["timeout"] == (1.5, 9)
    assert mocked.calls[1].request.headers["Content-Type"] == FHIR_JSON


def test_read_returns_the_resource_and_its_etag(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent/c1", json=consent("c1"), headers={"ETag": 'W/"4"'})
    assert client.read("Consent", "c1") == (consent("c1"), 'W/"4"')


def test_vread_asks_for_the_version_in_the_history_path(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent/c1/_history/2", json=consent("c1"), headers={"ETag": 'W/"2"'})
    assert client.vread("Consent", "c1", "2")[1] == 'W/"2"'


def test_update_sends_if_match_as_a_weak_etag_from_a_bare_version(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.put(f"{BASE}/Consent/c1", json=consent("c1"), headers={"ETag": 'W/"4"'})
    result = client.update(consent("c1"), if_match="3")
    assert mocked.calls[0].request.headers["If-Match"] == 'W/"3"'
    assert (result.status, result.version_id, result.created) == (200, "4", False)


def test_conditional_create_sends_if_none_exist(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.post(f"{BASE}/Consent", json=consent("c9"), status=201, headers={"Location": f"{BASE}/Consent/c9/_history/1"})
    query = identifier_query("https://example.test/id", "abc")
    result = client.create(consent(), if_none_exist=query)
    assert mocked.calls[0].request.headers["If-None-Exist"] == query
    assert (result.created, result.id) == (True, "c9")


def test_conditional_update_puts_to_the_type_with_the_search(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.put(f"{BASE}/Consent", json=consent("c3"), status=201)
    client.conditional_update(consent(), identifier_query("https://example.test/id", "abc"))
    assert mocked.calls[0].request.url == f"{BASE}/Consent?identifier=https%3A%2F%2Fexample.test%2Fid%7Cabc"


def test_ids_that_would_escape_the_resource_path_are_refused(client: FhirClient) -> None:
    with pytest.raises(ValueError):
        client.read("Consent", "../metadata")


# --------------------------------------------------------------------------- retries


def test_429_then_success_counts_one_retry(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent/c1", status=429)
    mocked.get(f"{BASE}/Consent/c1", json=consent("c1"))
    assert client.read("Consent", "c1")[0]["id"] == "c1"
    assert (client.stats.requests, client.stats.retries) == (2, 1)


def test_retry_after_in_seconds_is_honoured(mocked: responses.RequestsMock, client: FhirClient, sleeper: SleepRecorder) -> None:
    mocked.get(f"{BASE}/Consent/c1", status=429, headers={"Retry-After": "7"})
    mocked.get(f"{BASE}/Consent/c1", json=consent("c1"))
    client.read("Consent", "c1")
    assert sleeper.delays == [7.0]


def test_retry_after_as_http_date_is_honoured(mocked: responses.RequestsMock, client: FhirClient, sleeper: SleepRecorder) -> None:
    when = datetime.now(UTC) + timedelta(seconds=20)
    mocked.get(f"{BASE}/Consent/c1", status=503, headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)})
    mocked.get(f"{BASE}/Consent/c1", json=consent("c1"))
    client.read("Consent", "c1")
    assert len(sleeper.delays) == 1
    assert 17 <= sleeper.delays[0] <= 20


def test_http_date_retry_after_is_measured_from_now() -> None:
    now = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Fri, 20 Nov 2026 10:00:45 GMT", now=now) == 45.0


def test_retry_after_in_the_past_means_no_wait() -> None:
    now = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Fri, 20 Nov 2026 09:00:00 GMT", now=now) == 0.0


def test_unreadable_retry_after_is_ignored() -> None:
    assert parse_retry_after("soon") is None


def test_retry_after_longer_than_the_cap_is_capped(
    mocked: responses.RequestsMock, make_client: Callable[..., FhirClient], sleeper: SleepRecorder
) -> None:
    client = make_client(backoff_cap=12)
    mocked.get(f"{BASE}/Consent/c1", status=429, headers={"Retry-After": "3600"})
    mocked.get(f"{BASE}/Consent/c1", json=consent("c1"))
    client.read("Consent", "c1")
    assert sleeper.delays == [12]


def test_backoff_without_retry_after_is_full_jitter_under_an_exponential_ceiling(
    mocked: responses.RequestsMock, make_client: Callable[..., FhirClient], sleeper: SleepRecorder
) -> None:
    client = make_client(max_retries=4, backoff_base=0.5, backoff_cap=3, rng=random.Random(11))
    mocked.get(f"{BASE}/Consent/c1", status=502)
    with pytest.raises(ServerError):
        client.read("Consent", "c1")
    replica = random.Random(11)
    assert sleeper.delays == [backoff_delay(i, 0.5, 3, replica) for i in range(4)]
    assert all(d <= min(3, 0.5 * 2**i) for i, d in enumerate(sleeper.delays))


def test_persistent_503_exhausts_retries_into_server_error_with_the_outcome(
    mocked: responses.RequestsMock, make_client: Callable[..., FhirClient]
) -> None:
    client = make_client(max_retries=3)
    mocked.get(f"{BASE}/Consent/c1", status=503, json=outcome("transient", "database busy"))
    with pytest.raises(ServerError) as caught:
        client.read("Consent", "c1")
    assert caught.value.status == 503
    assert caught.value.outcome == outcome("transient", "database busy")
    assert (len(mocked.calls), client.stats.retries) == (4, 3)


def test_persistent_429_exhausts_retries_into_rate_limited(mocked: responses.RequestsMock, make_client: Callable[..., FhirClient]) -> None:
    client = make_client(max_retries=2)
    mocked.get(f"{BASE}/Consent/c1", status=429, headers={"Retry-After": "1"})
    with pytest.raises(RateLimited):
        client.read("Consent", "c1")
    assert len(mocked.calls) == 3


def test_plain_create_is_not_retried_after_a_5xx(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.post(f"{BASE}/Consent", status=503)
    with pytest.raises(ServerError):
        client.create(consent())
    assert (len(mocked.calls), client.stats.retries) == (1, 0)


def test_plain_create_is_not_retried_after_a_dropped_connection(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.post(f"{BASE}/Consent", body=requests.ConnectionError("connection reset"))
    with pytest.raises(TransportError):
        client.create(consent())
    assert len(mocked.calls) == 1


def test_conditional_create_is_retried(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.post(f"{BASE}/Consent", status=503)
    mocked.post(f"{BASE}/Consent", json=consent("c1"), status=200)
    result = client.create(consent(), if_none_exist=identifier_query("https://example.test/id", "abc"))
    assert (result.status, client.stats.retries) == (200, 1)


def test_dropped_connection_is_retried_for_get(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent/c1", body=requests.ConnectionError("connection reset by peer"))
    mocked.get(f"{BASE}/Consent/c1", json=consent("c1"))
    assert client.read("Consent", "c1")[0]["id"] == "c1"
    assert client.stats.retries == 1


def test_timeouts_that_persist_become_transport_error(mocked: responses.RequestsMock, make_client: Callable[..., FhirClient]) -> None:
    client = make_client(max_retries=2)
    mocked.get(f"{BASE}/Consent/c1", body=requests.ReadTimeout("read timed out"))
    with pytest.raises(TransportError):
        client.read("Consent", "c1")
    assert len(mocked.calls) == 3


def test_not_implemented_is_not_retried(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent/c1", status=501, json=outcome("not-supported", "no"))
    with pytest.raises(ServerError):
        client.read("Consent", "c1")
    assert len(mocked.calls) == 1


def test_client_errors_are_not_retried(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent/c1", status=404, json=outcome("not-found", "gone"))
    with pytest.raises(NotFound):
        client.read("Consent", "c1")
    assert len(mocked.calls) == 1


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([{"request": {"method": "PUT", "url": "Consent?identifier=a|b"}}], True),
        (
            [
                {"request": {"method": "POST", "url": "Consent", "ifNoneExist": "identifier=a|b"}},
                {"request": {"method": "DELETE", "url": "Consent/x"}},
            ],
            True,
        ),
        ([{"request": {"method": "PUT", "url": "Consent/1"}}, {"request": {"method": "POST", "url": "Consent"}}], False),
        ([{"resource": {}}], False),
    ],
)
def test_transaction_is_idempotent_only_when_every_entry_is(entries: list[dict[str, Any]], expected: bool) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    assert is_idempotent("POST", {}, bundle) is expected


def test_a_batch_is_never_treated_as_idempotent() -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "PUT", "url": "Consent/1"}}]}
    assert is_idempotent("POST", {}, bundle) is False


def test_transaction_with_a_plain_create_is_not_retried(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.post(BASE, status=500)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": consent(), "request": {"method": "POST", "url": "Consent"}}]}
    with pytest.raises(ServerError):
        client.transaction(bundle)
    assert len(mocked.calls) == 1


# --------------------------------------------------------------------------- typed errors


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, InvalidResource),
        (422, InvalidResource),
        (401, Unauthorized),
        (403, Unauthorized),
        (404, NotFound),
        (410, NotFound),
        (409, Conflict),
        (412, PreconditionFailed),
        (405, FhirError),
    ],
)
def test_error_statuses_raise_their_typed_error_with_the_outcome(
    mocked: responses.RequestsMock, client: FhirClient, status: int, error: type[FhirError]
) -> None:
    mocked.put(f"{BASE}/Consent/c1", status=status, json=outcome("processing", "no"))
    with pytest.raises(error) as caught:
        client.update(consent("c1"), if_match="1")
    assert (caught.value.status, caught.value.outcome) == (status, outcome("processing", "no"))


def test_error_without_an_operation_outcome_carries_none(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent/c1", status=404, body=b"")
    with pytest.raises(NotFound) as caught:
        client.read("Consent", "c1")
    assert caught.value.outcome is None


def test_html_page_instead_of_a_resource_is_malformed(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent/c1", body="<html><body>Sign in</body></html>", content_type="text/html")
    with pytest.raises(MalformedResponse):
        client.read("Consent", "c1")


def test_html_404_from_a_proxy_is_malformed_not_a_missing_resource(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent/c1", status=404, body="<html><h1>Not Found</h1></html>", content_type="text/html")
    with pytest.raises(MalformedResponse) as caught:
        client.read("Consent", "c1")
    assert caught.value.status == 404


def test_html_gateway_error_is_retried_then_a_server_error(mocked: responses.RequestsMock, make_client: Callable[..., FhirClient]) -> None:
    client = make_client(max_retries=1)
    mocked.get(f"{BASE}/Consent/c1", status=502, body="<html>Bad Gateway</html>", content_type="text/html")
    with pytest.raises(ServerError) as caught:
        client.read("Consent", "c1")
    assert (caught.value.outcome, len(mocked.calls)) == (None, 2)


def test_json_that_is_not_an_object_is_malformed(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent/c1", json=["not", "a", "resource"])
    with pytest.raises(MalformedResponse):
        client.read("Consent", "c1")


def test_truncated_json_is_malformed(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent/c1", body='{"resourceType": "Cons', content_type=FHIR_JSON)
    with pytest.raises(MalformedResponse):
        client.read("Consent", "c1")


def test_bundle_whose_entry_is_not_a_list_is_malformed(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent", json={"resourceType": "Bundle", "type": "searchset", "entry": {"resource": consent("c1")}})
    with pytest.raises(MalformedResponse):
        list(client.search("Consent"))


def test_search_answered_with_something_other_than_a_bundle_is_malformed(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent", json=consent("c1"))
    with pytest.raises(MalformedResponse):
        list(client.search("Consent"))


# --------------------------------------------------------------------------- paging


def test_search_follows_next_links_across_every_page(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(
        f"{BASE}/Consent",
        json=searchset(["a", "b"], f"{BASE}/Consent?_count=2&_offset=2"),
        match=[responses.matchers.query_param_matcher({"status": "active", "_count": "2"})],
    )
    mocked.get(
        f"{BASE}/Consent",
        json=searchset(["c", "d"], f"{BASE}/Consent?_count=2&_offset=4"),
        match=[responses.matchers.query_param_matcher({"_count": "2", "_offset": "2"})],
    )
    mocked.get(f"{BASE}/Consent", json=searchset(["e"]), match=[responses.matchers.query_param_matcher({"_count": "2", "_offset": "4"})])
    ids = [r["id"] for r in client.search("Consent", {"status": "active", "_count": "2"})]
    assert ids == ["a", "b", "c", "d", "e"]
    assert client.stats.requests == 3


def test_search_pages_yields_one_bundle_per_request(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent", json=searchset(["a"], f"{BASE}/Consent?page=2"), match=[responses.matchers.query_param_matcher({})])
    mocked.get(f"{BASE}/Consent", json=searchset([]), match=[responses.matchers.query_param_matcher({"page": "2"})])
    assert len(list(client.search_pages("Consent"))) == len(mocked.calls) == 2


def test_search_yields_only_matches_not_includes_or_outcomes(mocked: responses.RequestsMock, client: FhirClient) -> None:
    bundle = searchset(["a"])
    bundle["entry"] += [
        {"resource": {"resourceType": "Patient", "id": "p"}, "search": {"mode": "include"}},
        {"resource": outcome("informational", "x"), "search": {"mode": "outcome"}},
    ]
    mocked.get(f"{BASE}/Consent", json=bundle)
    assert [r["id"] for r in client.search("Consent")] == ["a"]


def test_empty_searchset_without_entries_yields_nothing(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent", json={"resourceType": "Bundle", "type": "searchset", "total": 0})
    assert list(client.search("Consent")) == []


def test_next_link_to_another_host_is_not_followed(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent", json=searchset(["a"], "https://elsewhere.test/fhir/Consent?page=2"))
    with pytest.raises(MalformedResponse, match="away"):
        list(client.search("Consent"))
    assert len(mocked.calls) == 1


def test_next_links_that_loop_are_stopped(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.get(f"{BASE}/Consent", json=searchset(["a"], f"{BASE}/Consent?page=2"))
    with pytest.raises(MalformedResponse, match="loop"):
        list(client.search("Consent"))
    assert len(mocked.calls) == 2


def test_paging_is_bounded_by_max_pages(mocked: responses.RequestsMock, make_client: Callable[..., FhirClient]) -> None:
    client = make_client(max_pages=3)
    for page in range(1, 6):
        mocked.get(
            f"{BASE}/Consent",
            json=searchset([str(page)], f"{BASE}/Consent?page={page + 1}"),
            match=[responses.matchers.query_param_matcher({"page": str(page)} if page > 1 else {})],
        )
    with pytest.raises(MalformedResponse, match="3 pages"):
        list(client.search("Consent"))
    assert len(mocked.calls) == 3


# --------------------------------------------------------------------------- privacy in logs


def test_logs_and_errors_hold_no_search_values_or_response_content(
    mocked: responses.RequestsMock, client: FhirClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    mocked.get(f"{BASE}/Consent", status=400, json=outcome("invalid", "Alex Example 9434765919 is not a valid subject"))
    with pytest.raises(InvalidResource) as caught:
        list(client.search("Consent", {"patient:identifier": "https://fhir.nhs.uk/Id/nhs-number|9434765919"}))
    assert "9434765919" not in caplog.text + str(caught.value)
    assert "Alex" not in caplog.text + str(caught.value)
    assert "/fhir/Consent?patient:identifier" in caplog.text


def test_redacted_path_keeps_parameter_names_only() -> None:
    assert redact_path(f"{BASE}/Consent?identifier=sys%7Cval&_count=5") == "/fhir/Consent?identifier&_count"


# --------------------------------------------------------------------------- auth


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def private_pem(rsa_key: rsa.RSAPrivateKey) -> bytes:
    return rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture
def clock() -> Clock:
    return Clock(1_800_000_000.0)


@pytest.fixture
def smart(private_pem: bytes, clock: Clock) -> SmartBackendAuth:
    return SmartBackendAuth(TOKEN_URL, "casus-sync", private_pem, "key-1", clock=clock)


def token_replies(mocked: responses.RequestsMock, *tokens: str, expires_in: int = 300) -> None:
    for token in tokens:
        mocked.post(TOKEN_URL, json={"access_token": token, "token_type": "bearer", "expires_in": expires_in, "scope": "system/Consent.*"})


def bearer_of(call: Any) -> str:
    return str(call.request.headers["Authorization"])


def fhir_calls(mocked: responses.RequestsMock) -> list[Any]:
    return [c for c in mocked.calls if c.request.url.startswith(BASE)]


def token_calls(mocked: responses.RequestsMock) -> list[Any]:
    return [c for c in mocked.calls if c.request.url == TOKEN_URL]


def test_smart_token_request_uses_client_credentials_with_a_jwt_assertion(mocked: responses.RequestsMock, smart: SmartBackendAuth) -> None:
    token_replies(mocked, "tok-1")
    smart.access_token()
    form = dict(parse_qsl(token_calls(mocked)[0].request.body))
    assert form["grant_type"] == "client_credentials"
    assert jwt.decode(form["client_assertion"], options={"verify_signature": False})["aud"] == TOKEN_URL
    assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    assert form["scope"] == "system/Consent.*"


def test_jwt_assertion_claims_verify_with_the_public_key(rsa_key: rsa.RSAPrivateKey, smart: SmartBackendAuth, clock: Clock) -> None:
    assertion = smart.client_assertion(clock.now)
    claims = jwt.decode(assertion, rsa_key.public_key(), algorithms=["RS384"], audience=TOKEN_URL, options={"verify_exp": False})
    header = jwt.get_unverified_header(assertion)
    assert (claims["iss"], claims["sub"], claims["aud"]) == ("casus-sync", "casus-sync", TOKEN_URL)
    assert 0 < claims["exp"] - clock.now <= 300
    assert (header["alg"], header["kid"]) == ("RS384", "key-1")


def test_each_jwt_assertion_has_a_unique_jti(smart: SmartBackendAuth, clock: Clock) -> None:
    jtis = {jwt.decode(smart.client_assertion(clock.now), options={"verify_signature": False})["jti"] for _ in range(5)}
    assert len(jtis) == 5


def test_smart_token_is_cached_across_requests(mocked: responses.RequestsMock, smart: SmartBackendAuth) -> None:
    token_replies(mocked, "tok-1", "tok-2")
    mocked.get(f"{BASE}/Consent/c1", json=consent("c1"))
    client = FhirClient(BASE, auth=smart)
    client.read("Consent", "c1")
    client.read("Consent", "c1")
    assert len(token_calls(mocked)) == 1
    assert [bearer_of(c) for c in fhir_calls(mocked)] == ["Bearer tok-1", "Bearer tok-1"]


def test_smart_token_is_refreshed_a_minute_before_expiry(mocked: responses.RequestsMock, smart: SmartBackendAuth, clock: Clock) -> None:
    token_replies(mocked, "tok-1", "tok-2")
    start = clock.now
    assert smart.access_token() == "tok-1"
    clock.now = start + 239
    assert smart.access_token() == "tok-1"
    clock.now = start + 240
    assert smart.access_token() == "tok-2"
    assert smart.token_requests == 2


def test_token_expiring_mid_run_is_refreshed_once_and_the_request_retried(mocked: responses.RequestsMock, smart: SmartBackendAuth) -> None:
    token_replies(mocked, "tok-1", "tok-2")
    mocked.post(f"{BASE}/Consent", status=401, json=outcome("login", "token expired"))
    mocked.post(f"{BASE}/Consent", status=201, json=consent("c1"))
    client = FhirClient(BASE, auth=smart)
    assert client.create(consent()).created
    assert [bearer_of(c) for c in fhir_calls(mocked)] == ["Bearer tok-1", "Bearer tok-2"]
    assert (client.stats.auth_refreshes, client.stats.retries) == (1, 0)


def test_a_second_401_after_refreshing_is_unauthorized(mocked: responses.RequestsMock, smart: SmartBackendAuth) -> None:
    token_replies(mocked, "tok-1", "tok-2", "tok-3")
    mocked.get(f"{BASE}/Consent/c1", status=401)
    client = FhirClient(BASE, auth=smart)
    with pytest.raises(Unauthorized):
        client.read("Consent", "c1")
    assert (len(fhir_calls(mocked)), len(token_calls(mocked))) == (2, 2)


def test_static_bearer_is_not_retried_after_401(mocked: responses.RequestsMock) -> None:
    mocked.get(f"{BASE}/Consent/c1", status=401)
    client = FhirClient(BASE, auth=StaticBearer("s3cret"))
    with pytest.raises(Unauthorized):
        client.read("Consent", "c1")
    assert len(mocked.calls) == 1
    assert bearer_of(mocked.calls[0]) == "Bearer s3cret"


def test_token_endpoint_refusal_is_unauthorized_naming_only_the_error_code(mocked: responses.RequestsMock, smart: SmartBackendAuth) -> None:
    mocked.post(TOKEN_URL, status=400, json={"error": "invalid_client", "error_description": "key for casus-sync unknown"})
    with pytest.raises(Unauthorized, match="invalid_client") as caught:
        smart.access_token()
    assert "unknown" not in str(caught.value)


def test_token_endpoint_over_plain_http_is_refused(private_pem: bytes) -> None:
    with pytest.raises(ConfigurationError):
        SmartBackendAuth("http://auth.trust.test/token", "casus-sync", private_pem, "key-1")


def test_tokens_never_reach_logs_or_reprs(mocked: responses.RequestsMock, smart: SmartBackendAuth, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token_replies(mocked, "tok-very-secret")
    mocked.get(f"{BASE}/Consent/c1", json=consent("c1"))
    FhirClient(BASE, auth=smart).read("Consent", "c1")
    bearer = StaticBearer("bearer-very-secret")
    assert "very-secret" not in caplog.text + repr(smart) + repr(bearer)


def test_auth_from_env_defaults_to_no_auth() -> None:
    assert isinstance(auth_from_env({}), NoAuth)


def test_auth_from_env_builds_a_static_bearer(mocked: responses.RequestsMock) -> None:
    auth = auth_from_env({"CASUS_FHIR_AUTH": "bearer", "CASUS_FHIR_TOKEN": "abc"})
    mocked.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    FhirClient(BASE, auth=auth).capabilities()
    assert bearer_of(mocked.calls[0]) == "Bearer abc"


def test_auth_from_env_names_the_missing_variable_not_values() -> None:
    with pytest.raises(ConfigurationError, match="CASUS_FHIR_TOKEN"):
        auth_from_env({"CASUS_FHIR_AUTH": "bearer"})


def test_auth_from_env_builds_smart_backend_auth_from_a_key_file(tmp_path: Path, private_pem: bytes) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(private_pem)
    env = {
        "CASUS_FHIR_AUTH": "smart",
        "CASUS_FHIR_TOKEN_URL": TOKEN_URL,
        "CASUS_FHIR_CLIENT_ID": "casus-sync",
        "CASUS_FHIR_PRIVATE_KEY_FILE": str(key_file),
        "CASUS_FHIR_KEY_ID": "key-1",
    }
    auth = auth_from_env(env)
    assert isinstance(auth, SmartBackendAuth)
    assert (auth.token_url, auth.client_id, auth.key_id, auth.alg) == (TOKEN_URL, "casus-sync", "key-1", "RS384")


def test_auth_from_env_rejects_an_unknown_kind() -> None:
    with pytest.raises(ConfigurationError, match="CASUS_FHIR_AUTH"):
        auth_from_env({"CASUS_FHIR_AUTH": "basic"})


def test_json_reply_bodies_are_fhir_json_encoded(mocked: responses.RequestsMock, client: FhirClient) -> None:
    mocked.post(f"{BASE}/Consent", json=consent("c1"), status=201)
    client.create(consent())
    assert json.loads(mocked.calls[0].request.body) == consent()
