"""Outbound FHIR R4 REST client used by sync to talk to the trust FHIR server.

Written against the FHIR REST specification (http://hl7.org/fhir/R4/http.html), not any one
server: JSON only (``application/fhir+json``), versions through ``ETag``/``If-Match``,
idempotent writes through conditional create (``If-None-Exist``) and conditional update
(``PUT [base]/Type?search``), paging through ``Bundle.link[relation=next]``.

Retry rule (why it is safe to send a request twice):

* retried on connection errors, timeouts, 429 (honouring ``Retry-After``) and 5xx, with
  exponential backoff and full jitter, at most ``max_retries`` times;
* only for *idempotent* requests: GET, HEAD, PUT, DELETE; a POST only when it is a conditional
  create (``If-None-Exist``: a second copy finds the first and creates nothing) or a transaction
  Bundle whose every entry is itself idempotent (GET/HEAD/PUT/DELETE, or POST with ``ifNoneExist``);
* a search sent as ``POST [base]/[type]/_search`` (a form-encoded search: it reads, never writes) is retried
  like a GET;
* every other POST (a plain create, a batch with plain creates) is sent once: if its fate is
  unknown the caller must look before writing again, or it may create a duplicate Consent.

A retried ``If-Match`` update whose first attempt did land reports ``PreconditionFailed``; the
caller re-reads and finds its own version, so nothing is lost or duplicated.

Privacy: response bodies may hold clinical content, so they never reach log lines or exception
messages.  Logs carry method, path (query *names* only), status and attempt; the server's
OperationOutcome travels on the exception for the caller to render.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

import requests

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
JsonDict = dict[str, Any]
SearchParams = Mapping[str, str] | Sequence[tuple[str, str]]

_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})
_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


# --------------------------------------------------------------------------- errors


class ConfigurationError(ValueError):
    """The client (or its auth) was configured in a way that is unsafe or incomplete."""


class FhirError(Exception):
    """A FHIR interaction failed; ``outcome`` is the server's OperationOutcome when it sent one.

    The message names method, path and status only, so logging the exception is safe.
    """

    def __init__(self, status: int | None, outcome: JsonDict | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.message = message


class NotFound(FhirError):
    """404 (no such resource) or 410 (deleted)."""


class PreconditionFailed(FhirError):
    """412: the If-Match version is stale, or a conditional update matched several resources."""


class Conflict(FhirError):
    """409: the server refused because of the resource's current state (e.g. a version conflict)."""


class InvalidResource(FhirError):
    """400 or 422: the server rejected the content; the OperationOutcome says where."""


class Unauthorized(FhirError):
    """401 or 403, or the token endpoint refused our credentials."""


class ServerError(FhirError):
    """5xx that persisted through every allowed retry (or a non-idempotent request that hit one)."""


class RateLimited(FhirError):
    """429 that persisted through every allowed retry."""


class TransportError(FhirError):
    """Connection failure or timeout that persisted through every allowed retry."""


class MalformedResponse(FhirError):
    """The server answered with something that is not the FHIR JSON it should be."""


_STATUS_ERRORS: dict[int, type[FhirError]] = {
    400: InvalidResource,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    410: NotFound,
    412: PreconditionFailed,
    422: InvalidResource,
    429: RateLimited,
}


def is_transient_status(status: int) -> bool:
    """429 and 5xx may clear up on their own; 501 and 505 (not implemented / unsupported version) will not."""
    return status == 429 or (status >= 500 and status not in (501, 505))


def error_class_for(status: int) -> type[FhirError]:
    """The typed exception for an HTTP error status (FhirError when the status has no special meaning)."""
    if status >= 500:
        return ServerError
    return _STATUS_ERRORS.get(status, FhirError)


# --------------------------------------------------------------------------- configuration checks


def is_loopback_host(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost, the only hosts plain HTTP may reach by default."""
    if not host:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport_security(url: str, *, allow_insecure_http: bool = False) -> SplitResult:
    """Refuse URLs that would send consent data or credentials in clear text off this machine."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigurationError(f"not an absolute http(s) URL: scheme {parts.scheme!r}")
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback_host(parts.hostname):
        raise ConfigurationError(f"refusing plain http to non-loopback host {parts.hostname!r}; use https or allow_insecure_http=True")
    return parts


# --------------------------------------------------------------------------- pure helpers


def redact_path(url: str) -> str:
    """Path plus query parameter *names*: search values (identifiers, NHS numbers) stay out of logs."""
    parts = urlsplit(url)
    names = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True)]
    return parts.path + ("?" + "&".join(names) if names else "")


def identifier_query(system: str, value: str) -> str:
    """``identifier=system|value`` URL-encoded: for If-None-Exist and conditional update."""
    return urlencode({"identifier": f"{system}|{value}"})


def weak_etag(version: str) -> str:
    """Accept a bare version id ("3") or an ETag ('W/"3"') and return the weak ETag form."""
    version = version.strip()
    if version.startswith(('W/"', '"')):
        return version
    return f'W/"{version}"'


def version_from_etag(etag: str | None) -> str | None:
    """'W/"3"' -> '3'; None when absent."""
    if not etag:
        return None
    return etag.strip().removeprefix("W/").strip('"') or None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter (uniform in [0, min(cap, base*2**attempt)]): spreads retrying clients apart."""
    return rng.uniform(0.0, min(cap, base * (2**attempt)))


def _entry_is_idempotent(entry: Any) -> bool:
    request = entry.get("request") if isinstance(entry, dict) else None
    if not isinstance(request, dict):
        return False
    method = str(request.get("method", "")).upper()
    return method in _IDEMPOTENT_METHODS or (method == "POST" and bool(request.get("ifNoneExist")))


def is_idempotent(method: str, headers: Mapping[str, str], body: JsonDict | None) -> bool:
    """Whether sending this request twice has the same effect as once (see the module docstring)."""
    method = method.upper()
    if method in _IDEMPOTENT_METHODS:
        return True
    if method != "POST":
        return False
    if any(k.lower() == "if-none-exist" and v for k, v in headers.items()):
        return True
    if body and body.get("resourceType") == "Bundle" and body.get("type") == "transaction":
        entries = body.get("entry")
        return isinstance(entries, list) and all(_entry_is_idempotent(e) for e in entries)
    return False


def bundle_entries(bundle: JsonDict) -> list[JsonDict]:
    """A Bundle's entries, checking the shape: absent means empty, anything but a list of objects is malformed."""
    if bundle.get("resourceType") != "Bundle":
        raise MalformedResponse(None, None, f"expected a Bundle, got {bundle.get('resourceType')!r}")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise MalformedResponse(None, None, "Bundle.entry is not a list of objects")
    return entries


def next_link(bundle: JsonDict) -> str | None:
    """The URL of Bundle.link[relation=next], if any."""
    links = bundle.get("link", [])
    if not isinstance(links, list):
        raise MalformedResponse(None, None, "Bundle.link is not a list")
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def matched_resources(bundle: JsonDict) -> Iterator[JsonDict]:
    """Resources of a searchset page that matched (not _include'd resources nor OperationOutcome entries)."""
    for entry in bundle_entries(bundle):
        mode = (entry.get("search") or {}).get("mode", "match")
        if mode != "match":
            continue
        resource = entry.get("resource")
        if not isinstance(resource, dict) or "resourceType" not in resource:
            raise MalformedResponse(None, None, "search Bundle entry without a resource")
        yield resource


# --------------------------------------------------------------------------- results and auth protocol


@dataclass
class ClientStats:
    """Counters a sync summary reports: every HTTP attempt sent, and how many were retries."""

    requests: int = 0
    retries: int = 0
    auth_refreshes: int = 0


@dataclass(frozen=True)
class WriteResult:
    """Outcome of a create/update: ``created`` tells a conditional write that made a new resource from one that found it."""

    status: int
    resource: JsonDict | None
    etag: str | None
    location: str | None

    @property
    def created(self) -> bool:
        return self.status == 201

    @property
    def version_id(self) -> str | None:
        return version_from_etag(self.etag) or _meta_version(self.resource)

    @property
    def id(self) -> str | None:
        if self.resource and isinstance(self.resource.get("id"), str):
            return self.resource["id"]
        return _id_from_location(self.location)


def _meta_version(resource: JsonDict | None) -> str | None:
    meta = (resource or {}).get("meta") or {}
    version = meta.get("versionId") if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


def _id_from_location(location: str | None) -> str | None:
    """[base]/Type/id/_history/vid -> id."""
    if not location:
        return None
    segments = urlsplit(location).path.rstrip("/").split("/")
    if "_history" in segments:
        segments = segments[: segments.index("_history")]
    return segments[-1] if len(segments) >= 2 else None


@runtime_checkable
class RefreshableAuth(Protocol):
    """Auth that can fetch a fresh credential after a 401 (e.g. a SMART access token that expired early)."""

    def refresh(self) -> bool:
        """Drop any cached credential; True when retrying with a new one makes sense."""
        ...


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: JsonDict | None


# --------------------------------------------------------------------------- the client


class FhirClient:
    """A FHIR R4 REST client over one ``requests.Session`` (connection reuse, one auth)."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: requests.auth.AuthBase | None = None,
        timeout: float | tuple[float, float] = (3.05, 30),
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30,
        verify: bool | str = True,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        allow_insecure_http: bool = False,
        rng: random.Random | None = None,
        max_pages: int = 10_000,
    ) -> None:
        check_transport_security(base_url, allow_insecure_http=allow_insecure_http)
        if max_retries < 0:
            raise ConfigurationError("max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self._origin = _origin(self.base_url)
        self.auth = auth
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.verify = verify
        self.max_pages = max_pages
        self.stats = ClientStats()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.session = session or requests.Session()
        self.session.headers.update({"Accept": FHIR_JSON})

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- interactions

    def capabilities(self) -> JsonDict:
        """GET [base]/metadata: the server's CapabilityStatement."""
        body = self._require_body(self._request("GET", self._url("metadata")), "CapabilityStatement")
        return body

    def read(self, resource_type: str, resource_id: str) -> tuple[JsonDict, str | None]:
        """GET [base]/Type/id -> (resource, ETag); NotFound for 404 and 410 (deleted)."""
        response = self._request("GET", self._url(_type(resource_type), _id(resource_id)))
        return self._require_body(response, resource_type), _etag(response)

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> tuple[JsonDict, str | None]:
        """GET [base]/Type/id/_history/vid -> (that version, ETag)."""
        url = self._url(_type(resource_type), _id(resource_id), "_history", _id(version_id))
        response = self._request("GET", url)
        return self._require_body(response, resource_type), _etag(response)

    def search_pages(self, resource_type: str, params: SearchParams | None = None) -> Iterator[JsonDict]:
        """Each searchset Bundle page, following Bundle.link[next]; one HTTP request per page.

        Next links must stay on the base URL's origin (the auth header goes with them) and the
        walk is bounded by ``max_pages`` and loop detection, so a faulty server cannot keep us forever.
        """
        return self._pages(self._url(_type(resource_type)), params)

    def history_pages(self, resource_type: str, params: SearchParams | None = None) -> Iterator[JsonDict]:
        """Each page of a type's history (``[type]/_history``: every version written or deleted, newest first),
        following Bundle.link[next] like ``search_pages``."""
        return self._pages(self._url(_type(resource_type), "_history"), params)

    def search_post_pages(self, resource_type: str, params: SearchParams) -> Iterator[JsonDict]:
        """Each page of ``POST [base]/Type/_search`` with the parameters form-encoded in the body, then the
        server's next links (GET, as the specification has them).

        The specification defines this form beside GET for every search: parameters travel in the body, so a
        long OR-list (``identifier=a,b,c``) needs no splitting to fit a URL.  A server that does not take it
        answers 4xx/501 (the caller decides whether to fall back to GET).
        """
        return self._pages(self._url(_type(resource_type), "_search"), None, form=params)

    def _pages(self, url: str, params: SearchParams | None, *, form: SearchParams | None = None) -> Iterator[JsonDict]:
        query: SearchParams | None = params or None
        seen: set[str] = set()
        for _ in range(self.max_pages):
            if form is not None:
                response = self._request("POST", url, form_body=form)
                form = None
            else:
                response = self._request("GET", url, params=query)
            bundle = self._require_body(response, "Bundle")
            bundle_entries(bundle)
            yield bundle
            following = next_link(bundle)
            if following is None:
                return
            if _origin(following) != self._origin:
                raise MalformedResponse(None, None, "next link points away from the server's base URL")
            if following in seen:
                raise MalformedResponse(None, None, "next links form a loop")
            seen.add(following)
            url, query = following, None
        raise MalformedResponse(None, None, f"paging did not end within {self.max_pages} pages")

    def search(self, resource_type: str, params: SearchParams | None = None) -> Iterator[JsonDict]:
        """Every matching resource across all pages (lazily: stop iterating to stop fetching)."""
        for bundle in self.search_pages(resource_type, params):
            yield from matched_resources(bundle)

    def create(self, resource: JsonDict, if_none_exist: str | None = None) -> WriteResult:
        """POST [base]/Type; with ``if_none_exist`` (e.g. ``identifier_query(...)``) a conditional create.

        Only the conditional form is retried (see the module docstring).
        """
        headers = {"If-None-Exist": if_none_exist} if if_none_exist else {}
        return self._write("POST", self._url(_type(resource.get("resourceType", ""))), resource, headers)

    def update(self, resource: JsonDict, if_match: str | None = None) -> WriteResult:
        """PUT [base]/Type/id; ``if_match`` (version id or ETag) makes it fail with PreconditionFailed when stale."""
        url = self._url(_type(resource.get("resourceType", "")), _id(resource.get("id", "")))
        headers = {"If-Match": weak_etag(if_match)} if if_match else {}
        return self._write("PUT", url, resource, headers)

    def conditional_update(self, resource: JsonDict, search: str) -> WriteResult:
        """PUT [base]/Type?search: creates (201) when nothing matches, updates (200) one match, 412 on several.

        ``search`` is an encoded query string such as ``identifier_query(system, value)``.
        """
        url = self._url(_type(resource.get("resourceType", ""))) + "?" + search.lstrip("?")
        return self._write("PUT", url, resource, {})

    def delete(self, resource_type: str, resource_id: str) -> None:
        """DELETE [base]/Type/id."""
        self._request("DELETE", self._url(_type(resource_type), _id(resource_id)))

    def transaction(self, bundle: JsonDict) -> JsonDict:
        """POST [base] with a transaction (or batch) Bundle; returns the response Bundle."""
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") not in ("transaction", "batch"):
            raise ValueError("transaction() needs a Bundle of type transaction or batch")
        response = self._request("POST", self.base_url, json_body=bundle)
        result = self._require_body(response, "Bundle")
        bundle_entries(result)
        return result

    # ---------------------------------------------------------------- plumbing

    def _url(self, *segments: str) -> str:
        return "/".join([self.base_url, *segments])

    def _write(self, method: str, url: str, resource: JsonDict, headers: dict[str, str]) -> WriteResult:
        headers = {**headers, "Prefer": "return=representation"}
        response = self._request(method, url, json_body=resource, headers=headers)
        if response.body is not None and not isinstance(response.body.get("resourceType"), str):
            raise MalformedResponse(response.status, None, f"{method} {redact_path(url)}: body is not a FHIR resource")
        return WriteResult(response.status, response.body, _etag(response), response.headers.get("Location"))

    def _require_body(self, response: _Response, resource_type: str) -> JsonDict:
        if response.body is None or response.body.get("resourceType") != resource_type:
            raise MalformedResponse(response.status, None, f"expected a {resource_type} in the response")
        return response.body

    def _request(
        self,
        method: str,
        url: str,
        *,
        params: SearchParams | None = None,
        json_body: JsonDict | None = None,
        form_body: SearchParams | None = None,
        headers: dict[str, str] | None = None,
    ) -> _Response:
        """Send with retries (idempotent requests and searches only) and one token refresh on 401; map errors to types."""
        headers = dict(headers or {})
        data: bytes | None = None
        if json_body is not None:
            headers["Content-Type"] = FHIR_JSON
            data = json.dumps(json_body, separators=(",", ":")).encode()
        elif form_body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            data = urlencode(form_body).encode()
        retryable = form_body is not None or is_idempotent(method, headers, json_body)
        path = redact_path(url + ("?" + urlencode(params) if params else ""))
        refreshed = False
        attempt = 0
        while True:
            self.stats.requests += 1
            try:
                raw = self.session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=headers,
                    auth=self.auth,
                    timeout=self.timeout,
                    verify=self.verify,
                    allow_redirects=False,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                log.warning("fhir %s %s attempt %d: %s", method, path, attempt + 1, type(exc).__name__)
                if retryable and attempt < self.max_retries:
                    self._pause(attempt, None)
                    attempt += 1
                    continue
                raise TransportError(None, None, f"{method} {path}: {type(exc).__name__} after {attempt + 1} attempt(s)") from exc
            status = raw.status_code
            log.debug("fhir %s %s -> %d (attempt %d)", method, path, status, attempt + 1)
            if status == 401 and not refreshed and isinstance(self.auth, RefreshableAuth) and self.auth.refresh():
                # 401 means the server did not act on the request, so re-sending is safe for any method.
                refreshed = True
                self.stats.auth_refreshes += 1
                continue
            if is_transient_status(status) and retryable and attempt < self.max_retries:
                log.warning("fhir %s %s -> %d (attempt %d), retrying", method, path, status, attempt + 1)
                self._pause(attempt, parse_retry_after(raw.headers.get("Retry-After")) if status in (429, 503) else None)
                attempt += 1
                continue
            return self._interpret(method, path, raw, attempt)

    def _pause(self, attempt: int, retry_after: float | None) -> None:
        self.stats.retries += 1
        delay = (
            min(retry_after, self.backoff_cap) if retry_after is not None else backoff_delay(attempt, self.backoff_base, self.backoff_cap, self._rng)
        )
        self._sleep(delay)

    def _interpret(self, method: str, path: str, raw: requests.Response, attempt: int) -> _Response:
        status = raw.status_code
        is_json, body = _parse_body(raw)
        if 200 <= status < 300:
            if not is_json:
                raise MalformedResponse(status, None, f"{method} {path} -> {status}: body is not FHIR JSON")
            return _Response(status, raw.headers, body)
        if not is_json and status < 500 and status != 429:
            # An HTML page on a 4xx is a proxy or a wrong base URL talking, not the FHIR server: do not
            # let a portal's 404 read as "this Consent does not exist".
            raise MalformedResponse(status, None, f"{method} {path} -> {status}: error body is not FHIR JSON")
        outcome = body if body is not None and body.get("resourceType") == "OperationOutcome" else None
        tries = f" after {attempt + 1} attempts" if attempt else ""
        raise error_class_for(status)(status, outcome, f"{method} {path} -> {status}{tries}")


def _parse_body(raw: requests.Response) -> tuple[bool, JsonDict | None]:
    """(is acceptable FHIR JSON, the object): an empty body is acceptable and None; HTML or a JSON non-object is not."""
    if not raw.content or not raw.content.strip():
        return True, None
    content_type = raw.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type and "json" not in content_type:
        return False, None
    try:
        body = raw.json()
    except ValueError:
        return False, None
    return (True, body) if isinstance(body, dict) else (False, None)


def _etag(response: _Response) -> str | None:
    etag = response.headers.get("ETag")
    if etag:
        return etag
    version = _meta_version(response.body)
    return weak_etag(version) if version else None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def _type(resource_type: Any) -> str:
    if not isinstance(resource_type, str) or not _RESOURCE_TYPE.match(resource_type):
        raise ValueError("not a FHIR resource type name")
    return resource_type


def _id(resource_id: Any) -> str:
    """Ids go into the URL path, so only FHIR id characters are allowed (no '/', '..', '?')."""
    if not isinstance(resource_id, str) or not _FHIR_ID.match(resource_id) or resource_id in (".", ".."):
        raise ValueError("not a FHIR id")
    return resource_id
