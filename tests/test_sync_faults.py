"""The sync job converges to the same end through an unreliable network as through a perfect one.

One scenario is played twice, each time on a FHIR server (sekmet-fhir) and a store of its own: once talking to
the server directly, once through ``tests.support.fault_proxy`` dropping connections (before and after the
server acted), delaying, and answering 429/503 on about 18% of requests, from a fixed seed.

The scenario: 30 local forms pushed in batches of 5 (pull pages of 10, so paging runs through the proxy too);
then, as other systems would, some of those Consents are changed directly on the server and two new ones are
created there, while some other forms are edited locally; then a second sync.

What is asserted (and what is deliberately not):

* the final state — every form's (formId, status, content) on the server, found by identifier search, and the
  latest version of every form in the local store — is the fault-free run's, and the two sides agree;
* each form identifier is on the server exactly once (no duplicate from a retried write), and nothing is lost;
* every retry the client made is reported: the sum of the runs' ``SyncSummary.retries`` (and ``requests``) equals
  the client's own stats, is above zero, and equals the faults the proxy injected that call for a retry;
* each phase reaches a run that reports "in step" (exit code 0) within ``MAX_RUNS`` runs.  The fault-free run
  needs exactly one run per phase.  Under faults a run may end early (``SyncAborted``, the CLI's exit 2) or report
  a spurious conflict: a write whose answer was lost, retried, and refused with 412 because the first attempt had
  landed.  That is allowed as long as a following run converges with nothing left over; server *version numbers*
  may therefore differ between the two runs (a retried conditional update makes an extra, identical version), so
  versions are not compared — content is.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter import nhs_number
from fhir_adapter.fhir_client import FhirClient, TransportError, identifier_query
from fhir_adapter.form import ConsentForm, form_to_json, parse_form
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.r4 import form_to_r4, r4_to_form
from fhir_adapter.store import Store
from fhir_adapter.sync import SyncAborted, SyncJob, SyncSummary
from tests.support.fault_proxy import FaultCounts, FaultProxy, running_fault_proxy
from tests.support.fhir_server import running_sekmet

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "profiles" / "examples").glob("form-*.json"))
LOCAL_FORMS = 30
BATCH_SIZE = 5
PAGE_SIZE = 10
REMOTE_EDITS = 6
REMOTE_NEW = 2
LOCAL_EDITS = 4
FAULT_RATE = 0.18
SEED = 12  # chosen so every kind of fault, including a write whose answer is lost, occurs (see the last fault test)
MAX_RUNS = 5
MAX_RETRIES = 12

# --------------------------------------------------------------------------- the scenario (pure)


def valid_nhs_number(rng: random.Random) -> str:
    """A random NHS number with a correct Modulus 11 check digit (nine digits redrawn when none fits)."""
    for _ in range(100):
        first = "".join(rng.choice("0123456789") for _ in range(9))
        digit = nhs_number.check_digit(first)
        if digit is not None:
            return first + str(digit)
    raise AssertionError("no valid NHS number in 100 draws")


def example_form(template: dict[str, Any], rng: random.Random) -> ConsentForm:
    """A profile example as a new form: fresh uuid4 formId and its own NHS number."""
    document = copy.deepcopy(template)
    document["formId"] = str(uuid.uuid4())
    document["youngPerson"]["nhsNumber"] = valid_nhs_number(rng)
    return parse_form(document)


def withdrawn(form: ConsentForm) -> ConsentForm:
    """The form after the young person withdrew it."""
    return parse_form({**form_to_json(form), "status": "withdrawn"})


def with_extra_gp(form: ConsentForm, person_id: str) -> ConsentForm:
    """The form with one more person the young person chose not to share with (a change to the content)."""
    document = form_to_json(form)
    document["people"] = [*document["people"], {"id": person_id, "name": "Dr B Jones", "role": "gp", "sharing": "do-not-share"}]
    return parse_form(document)


@dataclass(frozen=True)
class Scenario:
    """Forms created locally, then the changes made on each side before the second sync."""

    local: tuple[ConsentForm, ...]
    remote_edits: tuple[ConsentForm, ...]  # new versions of pushed forms, written on the server by another system
    remote_new: tuple[ConsentForm, ...]  # Consents another system creates on the server
    local_edits: tuple[ConsentForm, ...]  # new local versions of other pushed forms

    @property
    def form_ids(self) -> set[str]:
        return {f.form_id for f in (*self.local, *self.remote_new)}


def make_scenario(rng: random.Random) -> Scenario:
    templates = [json.loads(path.read_text()) for path in EXAMPLES]
    local = tuple(example_form(templates[n % len(templates)], rng) for n in range(LOCAL_FORMS))
    remote_edits = tuple(withdrawn(f) if f.status != "withdrawn" else with_extra_gp(f, "remote-gp") for f in local[:REMOTE_EDITS])
    local_edits = tuple(with_extra_gp(f, "local-gp") for f in local[REMOTE_EDITS : REMOTE_EDITS + LOCAL_EDITS])
    remote_new = tuple(example_form(templates[n % len(templates)], rng) for n in range(REMOTE_NEW))
    return Scenario(local, remote_edits, remote_new, local_edits)


# --------------------------------------------------------------------------- playing it


@dataclass(frozen=True)
class Outcome:
    """How one play of the scenario ended."""

    runs_per_phase: tuple[int, ...]
    in_step: tuple[bool, ...]  # whether each phase reached an exit-0 run within MAX_RUNS
    summaries: tuple[SyncSummary, ...]
    client_requests: int
    client_retries: int
    server: dict[str, list[str]]  # formId -> canonical content of every Consent the server holds for it
    server_casus_identifiers: Counter[str]  # every CASUS form identifier on the server, with multiplicity
    local: dict[str, str]  # formId -> canonical content of the latest local version
    faults: FaultCounts | None


def canonical(form: ConsentForm) -> str:
    """(formId, status and everything the form says) as one comparable string."""
    return json.dumps(form_to_json(form), sort_keys=True)


def sync_until_in_step(store: Store, client: FhirClient) -> tuple[int, bool, list[SyncSummary]]:
    """Run the sync until one run reports in step (exit 0), at most MAX_RUNS times; aborted runs count as runs."""
    summaries: list[SyncSummary] = []
    for run in range(1, MAX_RUNS + 1):
        try:
            summary = SyncJob(store, client, batch_size=BATCH_SIZE, page_size=PAGE_SIZE).run()
        except SyncAborted as aborted:
            summaries.append(aborted.summary)
            continue
        summaries.append(summary)
        if summary.exit_code() == 0:
            return run, True, summaries
    return MAX_RUNS, False, summaries


def change_on_server(direct: FhirClient, form: ConsentForm) -> None:
    """Write a new version over the server's Consent for this form, version-checked, as another system would."""
    [current] = direct.search("Consent", {"identifier": f"{codes.ID_CONSENT_FORM}|{form.form_id}"})
    resource = {**form_to_r4(form), "id": current["id"]}
    direct.update(resource, if_match=current["meta"]["versionId"])


def server_state(direct: FhirClient, form_ids: set[str]) -> dict[str, list[str]]:
    return {
        form_id: sorted(canonical(r4_to_form(r)) for r in direct.search("Consent", {"identifier": f"{codes.ID_CONSENT_FORM}|{form_id}"}))
        for form_id in form_ids
    }


def casus_identifiers_on_server(direct: FhirClient) -> Counter[str]:
    found: Counter[str] = Counter()
    for resource in direct.search("Consent", [("identifier", f"{codes.ID_CONSENT_FORM}|"), ("_count", "100")]):
        found.update(i["value"] for i in resource.get("identifier", []) if i.get("system") == codes.ID_CONSENT_FORM)
    return found


def local_state(store: Store) -> dict[str, str]:
    latest, total = store.search(limit=1000)
    assert total == len(latest)
    return {v.form_id: canonical(v.form) for v in latest}


def play(scenario: Scenario, base_url: str, sync_url: str, workdir: Path, faults: Callable[[], FaultCounts] | None) -> Outcome:
    """The whole scenario on one server; the sync talks to ``sync_url``, the 'other systems' to ``base_url`` directly."""
    with (
        Store.open(f"sqlite:///{workdir / 'casus.sqlite3'}") as store,
        FhirClient(base_url) as direct,
        FhirClient(sync_url, sleep=lambda _: None, rng=random.Random(SEED), max_retries=MAX_RETRIES) as client,
    ):
        for form in scenario.local:
            store.create_form(form, actor="clinician")
        first = sync_until_in_step(store, client)

        for form in scenario.remote_edits:
            change_on_server(direct, form)
        for form in scenario.remote_new:
            direct.conditional_update(form_to_r4(form), identifier_query(codes.ID_CONSENT_FORM, form.form_id))
        for form in scenario.local_edits:
            store.update_form(form, expected_version=store.get(form.form_id).version, actor="clinician")
        second = sync_until_in_step(store, client)

        return Outcome(
            runs_per_phase=(first[0], second[0]),
            in_step=(first[1], second[1]),
            summaries=(*first[2], *second[2]),
            client_requests=client.stats.requests,
            client_retries=client.stats.retries,
            server=server_state(direct, scenario.form_ids),
            server_casus_identifiers=casus_identifiers_on_server(direct),
            local=local_state(store),
            faults=faults() if faults is not None else None,
        )


@dataclass(frozen=True)
class Plays:
    scenario: Scenario
    fault_free: Outcome
    faulty: Outcome


@pytest.fixture(scope="module")
def plays(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plays]:
    """The scenario played fault-free and under faults, each on a fresh server and store (once for this module)."""
    scenario = make_scenario(random.Random(SEED))
    with running_sekmet(tmp_path_factory.mktemp("direct-server")) as server:
        fault_free = play(scenario, server.base_url, server.base_url, tmp_path_factory.mktemp("direct-store"), None)
    with (
        running_sekmet(tmp_path_factory.mktemp("faulty-server")) as server,
        running_fault_proxy(server.base_url, rate=FAULT_RATE, seed=SEED) as proxy,
    ):
        faulty = play(scenario, server.base_url, proxy.base_url, tmp_path_factory.mktemp("faulty-store"), lambda: proxy.counts)
    yield Plays(scenario, fault_free, faulty)


# --------------------------------------------------------------------------- the fault-free baseline


def test_without_faults_each_phase_is_in_step_after_one_run(plays: Plays) -> None:
    assert plays.fault_free.runs_per_phase == (1, 1)
    assert plays.fault_free.in_step == (True, True)


def test_without_faults_the_scenario_pushes_and_pulls_what_it_changed(plays: Plays) -> None:
    first, second = plays.fault_free.summaries
    assert (first.pushed, first.pulled) == (LOCAL_FORMS, 0)
    assert (second.pushed, second.pulled) == (LOCAL_EDITS, REMOTE_EDITS + REMOTE_NEW)


# --------------------------------------------------------------------------- under faults


def test_under_faults_every_phase_reaches_an_in_step_run_within_the_bound(plays: Plays) -> None:
    assert plays.faulty.in_step == (True, True), f"runs per phase: {plays.faulty.runs_per_phase}"


def test_under_faults_the_server_ends_with_the_fault_free_content_for_every_form(plays: Plays) -> None:
    assert plays.faulty.server == plays.fault_free.server


def test_under_faults_the_store_ends_with_the_fault_free_latest_version_of_every_form(plays: Plays) -> None:
    assert plays.faulty.local == plays.fault_free.local


def test_under_faults_both_sides_end_holding_the_same_content(plays: Plays) -> None:
    assert {form_id: [content] for form_id, content in plays.faulty.local.items()} == plays.faulty.server


def test_under_faults_each_form_identifier_is_on_the_server_exactly_once_and_none_is_missing(plays: Plays) -> None:
    assert plays.faulty.server_casus_identifiers == Counter(plays.scenario.form_ids)


def test_under_faults_the_summaries_report_every_request_and_retry_the_client_made(plays: Plays) -> None:
    summaries = plays.faulty.summaries
    assert sum(s.retries for s in summaries) == plays.faulty.client_retries > 0
    assert sum(s.requests for s in summaries) == plays.faulty.client_requests


def test_under_faults_the_client_retried_exactly_the_failures_the_proxy_injected(plays: Plays) -> None:
    faults = plays.faulty.faults
    assert faults is not None
    assert faults.requests == plays.faulty.client_requests
    assert faults.retry_provoking == plays.faulty.client_retries


def test_under_faults_every_kind_of_fault_was_injected_including_a_write_whose_answer_was_lost(plays: Plays) -> None:
    faults = plays.faulty.faults
    assert faults is not None
    assert min(faults.dropped_before, faults.writes_dropped_after, faults.delayed, faults.throttled, faults.unavailable) > 0, faults


# --------------------------------------------------------------------------- the proxy itself


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_sekmet(tmp_path_factory.mktemp("proxy-server")) as server:
        direct = FhirClient(server.base_url)
        for form in make_scenario(random.Random(SEED)).local[:5]:
            direct.conditional_update(form_to_r4(form), identifier_query(codes.ID_CONSENT_FORM, form.form_id))
        direct.close()
        yield server.base_url


def test_the_proxy_rebases_next_links_and_full_urls_onto_itself(shared_server: str) -> None:
    with running_fault_proxy(shared_server, rate=0.0) as proxy, FhirClient(proxy.base_url) as client:
        first = next(client.search_pages("Consent", {"_count": "2"}))
        base_url = proxy.base_url
    urls = [link["url"] for link in first["link"]] + [entry["fullUrl"] for entry in first["entry"]]
    assert urls and all(url.startswith(base_url + "/") for url in urls)


def test_the_proxy_pages_through_itself_to_every_resource(shared_server: str) -> None:
    with FhirClient(shared_server) as direct, running_fault_proxy(shared_server, rate=0.0) as proxy, FhirClient(proxy.base_url) as client:
        through_proxy = [r["id"] for r in client.search("Consent", {"_count": "2"})]
        assert sorted(through_proxy) == sorted(r["id"] for r in direct.search("Consent", {"_count": "100"}))
        assert proxy.counts.requests == -(-len(through_proxy) // 2)


def test_the_proxy_injects_the_same_faults_for_the_same_seed(shared_server: str) -> None:
    def faults_seen() -> FaultCounts:
        with (
            running_fault_proxy(shared_server, rate=0.5, seed=7, max_delay_s=0.01) as proxy,
            FhirClient(proxy.base_url, sleep=lambda _: None, max_retries=MAX_RETRIES) as client,
        ):
            for _ in range(10):
                client.capabilities()
            return proxy.counts

    assert faults_seen() == faults_seen()


def test_the_proxy_drop_after_lets_the_write_land_but_loses_the_answer(shared_server: str) -> None:
    form = make_scenario(random.Random(SEED + 1)).local[0]
    with (
        FhirClient(shared_server) as direct,
        running_fault_proxy(shared_server, rate=1.0, kinds=("drop-after",)) as proxy,
        FhirClient(proxy.base_url, max_retries=0) as client,
    ):
        with pytest.raises(TransportError, match="ConnectionError"):
            client.conditional_update(form_to_r4(form), identifier_query(codes.ID_CONSENT_FORM, form.form_id))
        landed = list(direct.search("Consent", {"identifier": f"{codes.ID_CONSENT_FORM}|{form.form_id}"}))
    assert (len(landed), proxy.counts.dropped_after) == (1, 1)


def test_the_proxy_stops_and_frees_its_port(shared_server: str) -> None:
    proxy = FaultProxy(shared_server, rate=0.0).start()
    base_url = proxy.base_url
    proxy.stop()
    with FhirClient(base_url, max_retries=0, timeout=2) as client, pytest.raises(TransportError, match="ConnectionError"):
        client.capabilities()
