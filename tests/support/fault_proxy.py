"""A fault-injecting HTTP proxy on loopback, between the sync client and a real FHIR server.

Why: the sync job's promise is "a retried or repeated request never makes a duplicate, and a run cut short
re-runs to the same end".  Mocked transports cannot show that against a real server's write semantics, so this
proxy forwards every request to the real server and, at random from a *fixed seed*, breaks some of them:

* ``drop-before``: reads the request, then closes the socket without forwarding or answering;
* ``drop-after``: forwards the request (the server acts on it), then closes the socket without answering — the
  nasty case for writes, since the client cannot tell whether its write landed;
* ``delay``: waits a bounded time (at most ``max_delay_s``) and then forwards normally;
* ``429`` (with ``Retry-After: 0`` or ``1``) and ``503``: answered by the proxy itself, never forwarded.

Absolute URLs in answers that point at the real server (``Location``/``Content-Location`` headers,
``Bundle.link[].url``, ``Bundle.entry[].fullUrl`` and ``Bundle.entry[].response.location``) are rebased onto the
proxy, so following a ``next`` link goes through the proxy (and its faults) too.

Every connection carries one request (HTTP/1.0 answers close it), so each attempt the client makes is exactly
one decision here: ``counts.requests`` equals the client's attempts and ``counts.retry_provoking`` the retries a
client that never gives up must make.  Decisions are drawn in arrival order from one ``random.Random(seed)``,
so a single-threaded client sees the same faults on every run.

The proxy logs nothing (URLs carry identifiers).  It serves from a background thread; ``stop`` shuts the
serve loop down and joins it and every handler thread (each bounded by socket timeouts), so nothing outlives
the fixture that started it.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest

from tests.support.fhir_server import SekmetServer

Fault = Literal["drop-before", "drop-after", "delay", "429", "503"]
FAULTS: tuple[Fault, ...] = ("drop-before", "drop-after", "delay", "429", "503")
#: Faults after which the client must send the request again (a delay is slow, not broken).
RETRY_PROVOKING: frozenset[Fault] = frozenset({"drop-before", "drop-after", "429", "503"})

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "content-encoding",
    }
)
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_LOOPBACK = frozenset({"127.0.0.1", "localhost"})
REQUEST_READ_TIMEOUT_S = 30.0
UPSTREAM_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 90.0


# --------------------------------------------------------------------------- decisions (pure)


@dataclass(frozen=True)
class Decision:
    """What the proxy does with one request: no fault (None) or one fault, with its parameters."""

    fault: Fault | None
    delay_s: float = 0.0
    retry_after_s: int = 0


def decide(rng: random.Random, rate: float, kinds: Sequence[Fault], max_delay_s: float) -> Decision:
    """One request's fate: a fault with probability ``rate``, its kind uniform among ``kinds``.

    >>> decide(random.Random(1), 0.0, FAULTS, 0.3)
    Decision(fault=None, delay_s=0.0, retry_after_s=0)
    >>> decide(random.Random(1), 1.0, ("429",), 0.3).fault
    '429'
    """
    if rng.random() >= rate:
        return Decision(None)
    fault = rng.choice(kinds)
    if fault == "delay":
        return Decision(fault, delay_s=rng.uniform(0.0, max_delay_s))
    if fault == "429":
        return Decision(fault, retry_after_s=rng.choice((0, 1)))
    return Decision(fault)


# --------------------------------------------------------------------------- URL rebasing (pure)


def origin_of(url: str) -> str:
    """``http://127.0.0.1:8092/fhir`` -> ``http://127.0.0.1:8092``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def rebase_url(url: str, upstream_origin: str, proxy_origin: str) -> str:
    """Point a URL on the real server at the proxy; any other URL (or urn:uuid) is left alone.

    >>> rebase_url("http://127.0.0.1:8092/fhir/Consent?_offset=2", "http://127.0.0.1:8092", "http://127.0.0.1:9000")
    'http://127.0.0.1:9000/fhir/Consent?_offset=2'
    >>> rebase_url("http://127.0.0.1:80921/fhir", "http://127.0.0.1:8092", "http://127.0.0.1:9000")
    'http://127.0.0.1:80921/fhir'
    """
    if url == upstream_origin or url.startswith((upstream_origin + "/", upstream_origin + "?")):
        return proxy_origin + url[len(upstream_origin) :]
    return url


def rebase_bundle(document: dict[str, Any], rebase: Callable[[str], str]) -> dict[str, Any]:
    """A copy of a FHIR JSON document whose Bundle links, fullUrls and response locations go through ``rebase``.

    Nested Bundles (a Bundle as an entry's resource) are rebased too; other resources are returned as they are.
    """
    if document.get("resourceType") != "Bundle":
        return document
    result = copy.deepcopy(document)
    for link in result.get("link") or []:
        if isinstance(link, dict) and isinstance(link.get("url"), str):
            link["url"] = rebase(link["url"])
    for entry in result.get("entry") or []:
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("fullUrl"), str):
            entry["fullUrl"] = rebase(entry["fullUrl"])
        response = entry.get("response")
        if isinstance(response, dict) and isinstance(response.get("location"), str):
            response["location"] = rebase(response["location"])
        if isinstance(entry.get("resource"), dict):
            entry["resource"] = rebase_bundle(entry["resource"], rebase)
    return result


def rebase_body(body: bytes, content_type: str, rebase: Callable[[str], str]) -> bytes:
    """The response body with server URLs rebased, when it is FHIR JSON; anything else passes through unchanged."""
    if not body or "json" not in content_type.lower():
        return body
    try:
        document = json.loads(body)
    except ValueError:
        return body
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        return body
    return json.dumps(rebase_bundle(document, rebase), separators=(",", ":")).encode()


def forwardable_headers(headers: Mapping[str, str] | Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """End-to-end headers only: hop-by-hop ones, Host, Content-Length and encodings are the proxy's own business.

    Accept-Encoding is dropped so the server answers in identity encoding and the body can be rebased.
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(name, value) for name, value in items if name.lower() not in _HOP_BY_HOP]


def operation_outcome_bytes(code: str, text: str) -> bytes:
    """A minimal OperationOutcome for the proxy's own error answers (no request content in it)."""
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
    return json.dumps(outcome).encode()


# --------------------------------------------------------------------------- counts


@dataclass(frozen=True)
class FaultCounts:
    """How many requests reached the proxy and what was done to them (a snapshot)."""

    requests: int = 0
    forwarded: int = 0
    dropped_before: int = 0
    dropped_after: int = 0
    delayed: int = 0
    throttled: int = 0  # 429
    unavailable: int = 0  # 503
    writes_dropped_after: int = 0  # drop-after on POST/PUT/PATCH/DELETE: the write landed, its answer was lost

    @property
    def retry_provoking(self) -> int:
        """Faults a client must answer by sending the request again."""
        return self.dropped_before + self.dropped_after + self.throttled + self.unavailable

    @property
    def injected(self) -> int:
        return self.retry_provoking + self.delayed


_COUNT_FIELD: dict[Fault, str] = {
    "drop-before": "dropped_before",
    "drop-after": "dropped_after",
    "delay": "delayed",
    "429": "throttled",
    "503": "unavailable",
}


# --------------------------------------------------------------------------- the proxy


@dataclass(frozen=True)
class _Upstream:
    host: str
    port: int
    origin: str


@dataclass(frozen=True)
class _Answer:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


class _Server(ThreadingHTTPServer):
    """Handler threads are non-daemon so ``server_close`` joins them (ThreadingHTTPServer makes them daemons)."""

    daemon_threads = False
    block_on_close = True
    proxy: FaultProxy


class _Handler(BaseHTTPRequestHandler):
    """One request per connection (HTTP/1.0), so a dropped connection never takes a second request with it."""

    server: _Server
    protocol_version = "HTTP/1.0"
    timeout = REQUEST_READ_TIMEOUT_S

    def do_GET(self) -> None:
        self.server.proxy.handle(self)

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET  # noqa: N815 (http.server's naming)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: request lines carry identifiers, which must not reach logs."""

    def read_body(self) -> bytes | None:
        """The request body by Content-Length; None when it is chunked (FhirClient never sends chunked)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return None
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def answer(self, answer: _Answer) -> None:
        self.send_response(answer.status, answer.reason)
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)


class FaultProxy:
    """Forwards to ``upstream_base_url`` on loopback, injecting faults at ``rate`` from ``random.Random(seed)``."""

    def __init__(
        self,
        upstream_base_url: str,
        *,
        rate: float = 0.18,
        seed: int = 20261125,
        max_delay_s: float = 0.3,
        kinds: Sequence[Fault] = FAULTS,
        sleep: Callable[[float], None] = time.sleep,
        writes_only: bool = False,
        max_faults: int | None = None,
    ) -> None:
        parts = urlsplit(upstream_base_url)
        if parts.scheme != "http" or parts.hostname not in _LOOPBACK or parts.port is None:
            raise ValueError("the fault proxy only fronts an http server on loopback with an explicit port")
        if not 0.0 <= rate <= 1.0 or not 0.0 <= max_delay_s <= 5.0 or not kinds or not set(kinds) <= set(FAULTS):
            raise ValueError("rate must be in [0, 1], max_delay_s in [0, 5], kinds a non-empty subset of FAULTS")
        self._upstream = _Upstream(parts.hostname, parts.port, origin_of(upstream_base_url))
        self._path = parts.path.rstrip("/")
        self.rate, self.seed, self.max_delay_s, self.kinds = rate, seed, max_delay_s, tuple(kinds)
        self.writes_only, self.max_faults = writes_only, max_faults  # aim faults at writes; stop after this many
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FaultProxy:
        if self._server is not None:
            raise RuntimeError("the proxy is already running")
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, then wait for the serve loop and every in-flight handler (all bounded by timeouts)."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join(STOP_TIMEOUT_S)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        """The FHIR base URL to give a client: the upstream's path on the proxy's origin."""
        return self.origin + self._path

    @property
    def counts(self) -> FaultCounts:
        with self._lock:
            return FaultCounts(**{name: self._counts[name] for name in FaultCounts.__dataclass_fields__})

    # ---------------------------------------------------------------- one request

    def handle(self, handler: _Handler) -> None:
        body = handler.read_body()
        decision = self._decide(is_write=handler.command in _WRITE_METHODS)
        if body is None:
            handler.answer(
                _Answer(
                    411,
                    "Length Required",
                    [("Content-Type", "application/fhir+json")],
                    operation_outcome_bytes("not-supported", "chunked request bodies are not supported"),
                )
            )
            return
        if decision.fault == "drop-before":
            return  # nothing written: the connection closes with no answer
        if decision.fault in ("429", "503"):
            handler.answer(self._refusal(decision))
            return
        if decision.fault == "delay":
            self._sleep(decision.delay_s)
        answer = self._forward(handler, body)
        if decision.fault == "drop-after":
            return  # the server has acted on the request; the client never hears how
        handler.answer(answer)

    def _decide(self, *, is_write: bool) -> Decision:
        with self._lock:
            decision = decide(self._rng, self.rate, self.kinds, self.max_delay_s)
            spent = self.max_faults is not None and self._counts["faults"] >= self.max_faults
            if decision.fault is not None and ((self.writes_only and not is_write) or spent):
                decision = Decision(None)
            if decision.fault is not None:
                self._counts["faults"] += 1
            self._counts["requests"] += 1
            if decision.fault is not None:
                self._counts[_COUNT_FIELD[decision.fault]] += 1
            if decision.fault == "drop-after" and is_write:
                self._counts["writes_dropped_after"] += 1
            if decision.fault not in ("drop-before", "429", "503"):
                self._counts["forwarded"] += 1
            return decision

    @staticmethod
    def _refusal(decision: Decision) -> _Answer:
        headers = [("Content-Type", "application/fhir+json")]
        if decision.fault == "429":
            return _Answer(
                429,
                "Too Many Requests",
                [*headers, ("Retry-After", str(decision.retry_after_s))],
                operation_outcome_bytes("throttled", "injected 429"),
            )
        return _Answer(503, "Service Unavailable", headers, operation_outcome_bytes("transient", "injected 503"))

    def _forward(self, handler: _Handler, body: bytes) -> _Answer:
        connection = http.client.HTTPConnection(self._upstream.host, self._upstream.port, timeout=UPSTREAM_TIMEOUT_S)
        try:
            connection.putrequest(handler.command, handler.path, skip_accept_encoding=True)
            for name, value in forwardable_headers(handler.headers.items()):
                connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body or None)
            response = connection.getresponse()
            raw = response.read()
            status, reason, headers = response.status, response.reason, forwardable_headers(response.getheaders())
        except OSError:
            return _Answer(
                502,
                "Bad Gateway",
                [("Content-Type", "application/fhir+json")],
                operation_outcome_bytes("transient", "the upstream FHIR server did not answer"),
            )
        finally:
            connection.close()
        rebase = self._rebase
        content_type = next((v for n, v in headers if n.lower() == "content-type"), "")
        rebased = [(n, rebase(v) if n.lower() in ("location", "content-location") else v) for n, v in headers]
        return _Answer(status, reason, rebased, rebase_body(raw, content_type, rebase))

    def _rebase(self, url: str) -> str:
        return rebase_url(url, self._upstream.origin, self.origin)


@contextlib.contextmanager
def running_fault_proxy(upstream_base_url: str, **options: Any) -> Iterator[FaultProxy]:
    """A started proxy in front of ``upstream_base_url``, stopped (and joined) on leaving the block."""
    proxy = FaultProxy(upstream_base_url, **options).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def fault_proxy_factory() -> Iterator[Callable[..., FaultProxy]]:
    """Start proxies in front of any loopback server (``make(base_url, rate=..., seed=...)``); all stop at teardown."""
    started: list[FaultProxy] = []

    def make(upstream_base_url: str, **options: Any) -> FaultProxy:
        proxy = FaultProxy(upstream_base_url, **options).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in reversed(started):
        proxy.stop()


@pytest.fixture
def fault_proxy(fhir_server: SekmetServer, fault_proxy_factory: Callable[..., FaultProxy]) -> FaultProxy:
    """A proxy with the default fault rate and seed in front of the session's shared FHIR server."""
    return fault_proxy_factory(fhir_server.base_url)
