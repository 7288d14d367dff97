"""Sync at scale against a real FHIR R4 server (sekmet-fhir on loopback): push, pull, re-sync, memory, SIGKILL.

Measured in one run, each measurement on a fresh server and a fresh copy of the same pre-filled store (filled with
``Store.bulk_load``, outside every measurement):

* push of N consents with transaction batches of 100 (``SyncJob(batch_size=100)``) at each size (default 1,000 and
  20,000), against the baseline measured in the same run: per-resource push (``batch_size=1``: one identifier
  look-up and one single-entry transaction per form) and the server's own floor (pre-mapped Consents, no sync logic);
* requests per batch of the push: identifier look-ups (one ``POST Consent/_search`` per batch where the server
  takes it) and transactions;
* after the batched push, the first pull (it walks our own N pushes as echoes) and then a no-change re-sync:
  requests made, pages walked, and search requests per page (target: at most one);
* peak RSS of the sync process at each size (the sync runs in a child process per measurement, which reports its
  own ``VmHWM`` from /proc/self/status).  Target: peak at the largest size within 1.2x of the smallest;
* resuming after SIGKILL: ``fhir-adapter sync`` started again and again on one store and server, each run killed
  with SIGKILL after a random delay (0.3 s up to 2.5 s per 1,000 consents, so kills land in push, in pull, between
  batches or inside a request at any size), then one run left to finish and one more that must find nothing to
  do.  Checked on the server: every form's business identifier is there exactly once, none is missing, and no
  Consent has more than one version.

Run:  python benchmarks/bench_sync.py [--sizes 1000,20000] [--per-resource-consents 1000] [--floor-consents 1000]
                                      [--kill-consents 1000] [--kills 12]
(needs sekmet-fhir; installed on first use into $CASUS_SEKMET_VENV or .cache/sekmet-venv, like the test suite).
Privacy: synthetic forms only; nothing but counts and timings is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the sekmet start/stop helpers live in the test support package

from bench_mapping import realistic_form  # noqa: E402  (same directory: the mapping benchmark's typical form)

from fhir_adapter import nhs_number  # noqa: E402
from fhir_adapter.fhir_client import FhirClient, identifier_query, matched_resources  # noqa: E402
from fhir_adapter.form import ConsentForm  # noqa: E402
from fhir_adapter.mappings import codes  # noqa: E402
from fhir_adapter.mappings.r4 import form_to_r4  # noqa: E402
from fhir_adapter.store import Store  # noqa: E402
from fhir_adapter.sync import SyncJob, SyncSummary  # noqa: E402
from tests.support.fhir_server import running_sekmet  # noqa: E402

BATCH = 100
PER_RESOURCE = 1
PAGE_SIZE = 100
CHILD_TIMEOUT_S = 3600
RUN_TIMEOUT_S = 1800
MAX_KILL_DELAY_S = 2.5  # at 1,000 consents or fewer; the range grows with the size (kill_delay_range)


# --------------------------------------------------------------------------- synthetic forms (pure)


def valid_nhs_number(rng: random.Random) -> str:
    while True:  # about one draw in eleven has no check digit, so this ends after a few draws
        first = "".join(rng.choice("0123456789") for _ in range(9))
        digit = nhs_number.check_digit(first)
        if digit is not None:
            return first + str(digit)


def synthetic_form(n: int, rng: random.Random) -> ConsentForm:
    """The mapping benchmark's typical form (six people, mixed choices), with a fresh uuid4 and its own NHS number."""
    form = realistic_form(n)
    young = dataclasses.replace(form.young_person, nhs_number=valid_nhs_number(rng))
    return dataclasses.replace(form, form_id=str(uuid.uuid4()), young_person=young)


# --------------------------------------------------------------------------- counting requests by kind


class CountingSession(requests.Session):
    """Counts every HTTP attempt by kind (search, transaction, other) so a run's request mix can be reported."""

    def __init__(self, base_path: str) -> None:
        super().__init__()
        self.base_path = base_path.rstrip("/")
        self.kinds: Counter[str] = Counter()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        self.kinds[request_kind(str(method), str(url), self.base_path)] += 1
        return super().request(method, url, *args, **kwargs)


def request_kind(method: str, url: str, base_path: str) -> str:
    """'search' (GET on a resource type or POST to its ``_search``), 'transaction' (POST to the base) or 'other'.

    >>> request_kind("GET", "http://h/fhir/Consent?identifier=x", "/fhir"), request_kind("POST", "http://h/fhir", "/fhir")
    ('search', 'transaction')
    >>> request_kind("POST", "http://h/fhir/Consent/_search", "/fhir"), request_kind("GET", "http://h/fhir/Consent/_history", "/fhir")
    ('search', 'other')
    """
    path = urlsplit(url).path.rstrip("/")
    if method.upper() == "POST" and path == base_path:
        return "transaction"
    rest = path.removeprefix(base_path).strip("/").split("/")
    if method.upper() == "POST" and len(rest) == 2 and rest[1] == "_search":
        return "search"
    return "search" if method.upper() == "GET" and len(rest) == 1 and rest[0][:1].isupper() else "other"


# --------------------------------------------------------------------------- the child: one measured sync


def peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


@dataclasses.dataclass
class Phase:
    seconds: float
    requests: int
    searches: int
    transactions: int
    pages: int  # pages of changes walked (progress reports with at least one item)


def measured(job: SyncJob, session: CountingSession, pages: Counter[str], **options: bool) -> tuple[Phase, SyncSummary]:
    before, pages_before = Counter(session.kinds), Counter(pages)
    started = time.perf_counter()
    summary = job.run(**options)
    seconds = time.perf_counter() - started
    done = session.kinds - before
    walked = pages - pages_before
    return Phase(seconds, summary.requests, done["search"], done["transaction"], walked["pull"] + walked["push"]), summary


def child(args: argparse.Namespace) -> None:
    """One measurement: push (batched or per-resource); for batched also the first pull and a no-change re-sync."""
    session = CountingSession(urlsplit(args.base_url).path)
    pages: Counter[str] = Counter()
    with Store.open(f"sqlite:///{args.store}") as store, FhirClient(args.base_url, session=session) as client:
        baseline = current_rss_kib()
        job = SyncJob(store, client, batch_size=args.batch_size, page_size=PAGE_SIZE, progress=lambda stage, _n: pages.update([stage]))
        push, summary = measured(job, session, pages, push=True, pull=False)
        if summary.exit_code() != 0 or summary.pushed != args.consents:
            raise SystemExit(f"push did not finish in step: pushed {summary.pushed}/{args.consents}, exit {summary.exit_code()}")
        result: dict[str, Any] = {"push": dataclasses.asdict(push)}
        if not args.push_only:
            pull, summary = measured(job, session, pages, push=True, pull=True)
            resync, again = measured(job, session, pages, push=True, pull=True)
            if (summary.pulled, again.pushed, again.pulled, again.exit_code()) != (0, 0, 0, 0):
                raise SystemExit("the re-sync after a complete sync was not a no-change run")
            result |= {"first_pull": dataclasses.asdict(pull), "resync": dataclasses.asdict(resync)}
        result |= {"baseline_rss_kib": baseline, "peak_rss_kib": peak_rss_kib()}
    print(json.dumps(result))


# --------------------------------------------------------------------------- the parent: servers, stores, table


def fill_store(path: Path, forms: list[ConsentForm]) -> float:
    started = time.perf_counter()
    with Store.open(f"sqlite:///{path}") as store:
        store.bulk_load(([form] for form in forms), actor="bench")
    return time.perf_counter() - started


def run_child(template: Path, workdir: Path, *, consents: int, batch_size: int, push_only: bool) -> dict[str, Any]:
    """Copy the filled store, start a fresh server, and measure one sync in a child process."""
    workdir.mkdir(parents=True)
    store = workdir / "casus.sqlite3"
    shutil.copyfile(template, store)
    with running_sekmet(workdir / "sekmet") as server:
        command = [
            sys.executable,
            __file__,
            "--child",
            "--base-url",
            server.base_url,
            "--store",
            str(store),
            "--batch-size",
            str(batch_size),
            "--consents",
            str(consents),
        ] + (["--push-only"] if push_only else [])
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        if not push_only:
            result["raw_walk"] = raw_walk(server.base_url)
    return result


def raw_walk(base_url: str) -> dict[str, float]:
    """The server's floor for a pull: the same search the first pull makes, pages followed by next link, no sync logic."""
    params: dict[str, str] | None = {"identifier": f"{codes.ID_CONSENT_FORM}|", "_sort": "_lastUpdated", "_count": str(PAGE_SIZE)}
    url: str | None = f"{base_url}/Consent"
    pages = 0
    started = time.perf_counter()
    with requests.Session() as session:
        while url is not None and pages < 100_000:
            bundle = session.get(url, params=params, headers={"Accept": "application/fhir+json"}, timeout=600).json()
            pages, params = pages + 1, None
            url = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)
    return {"seconds": time.perf_counter() - started, "pages": pages}


def templates(workdir: Path, sizes: set[int]) -> dict[int, Path]:
    """One filled store per size (each a prefix of the same synthetic forms), built once and copied per measurement."""
    rng = random.Random(20261125)
    forms = [synthetic_form(n, rng) for n in range(max(sizes))]
    paths: dict[int, Path] = {}
    for size in sorted(sizes):
        paths[size] = workdir / f"template-{size}.sqlite3"
        seconds = fill_store(paths[size], forms[:size])
        print(f"(filled a store with {size} forms in {seconds:.1f}s; not part of any measurement)", flush=True)
    return paths


def raw_push_seconds(forms: list[ConsentForm], batch_size: int, workdir: Path) -> tuple[float, int]:
    """The server's own floor: pre-mapped Consents sent as conditional-PUT transactions with no sync logic at all.

    No search, no store, no mapping inside the timing: what is left is HTTP plus the server's per-Consent work, which
    bounds how much faster than per-resource any client can push to this server.
    """
    bundles = [
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                    "resource": form_to_r4(form),
                    "request": {"method": "PUT", "url": "Consent?" + identifier_query(codes.ID_CONSENT_FORM, form.form_id)},
                }
                for form in forms[start : start + batch_size]
            ],
        }
        for start in range(0, len(forms), batch_size)
    ]
    bodies = [json.dumps(bundle, separators=(",", ":")).encode() for bundle in bundles]
    with running_sekmet(workdir) as server, requests.Session() as session:
        started = time.perf_counter()
        for body in bodies:
            response = session.post(server.base_url, data=body, headers={"Content-Type": "application/fhir+json"}, timeout=600)
            response.raise_for_status()
        return time.perf_counter() - started, len(bodies)


# --------------------------------------------------------------------------- resuming after SIGKILL


@dataclasses.dataclass
class KillResume:
    consents: int
    kills: int  # runs killed with SIGKILL
    finished_early: int  # runs that ended before their kill time came
    delay_range: tuple[float, float]
    kill_delays: list[float]
    on_server_at_kill: list[int]  # CASUS Consents on the server when each kill landed (shows where in the work it was)
    final_exit: int
    again_exit: int
    again_summary: dict[str, Any]
    on_server: int
    identifiers_once: bool
    missing: int
    consents_past_version_1: int
    seconds: float


def casus_consents(base_url: str) -> Iterator[dict[str, Any]]:
    with FhirClient(base_url) as client:
        for bundle in client.search_pages("Consent", [("identifier", f"{codes.ID_CONSENT_FORM}|"), ("_count", "1000")]):
            yield from matched_resources(bundle)


def sync_command(store: Path, base_url: str) -> tuple[list[str], dict[str, str]]:
    env = {
        **os.environ,
        "CASUS_DATABASE_URL": f"sqlite:///{store}",
        "CASUS_FHIR_BASE_URL": base_url,
        "CASUS_FHIR_AUTH": "none",
        "CASUS_LOG_LEVEL": "WARNING",
    }
    return [sys.executable, "-m", "fhir_adapter", "sync", "--batch-size", str(BATCH)], env


def kill_delay_range(consents: int) -> tuple[float, float]:
    """Seconds after start between which each run is killed.

    Start-up is about 1 s and a whole sync of 1,000 consents a few seconds, so 0.3-2.5 s puts kills in start-up, push
    and pull.  The work grows with the number of consents, and with a fixed range a dozen kills at 20,000 would all
    land in the first minute of the push; the upper end grows in proportion so they spread over push and pull.

    >>> kill_delay_range(1000), kill_delay_range(20000)
    ((0.3, 2.5), (0.3, 50.0))
    """
    return 0.3, MAX_KILL_DELAY_S * max(1.0, consents / 1000)


def kill_resume(template: Path, workdir: Path, *, consents: int, kills: int, seed: int) -> KillResume:
    """Start ``fhir-adapter sync`` ``kills`` times, SIGKILL each after a random delay, then let one run finish and check
    the server holds every form exactly once.  Random delays short against the whole sync, so each killed run gets a
    little further than the last and the kills fall at different points: before the first request, mid-batch, between
    batches, in pull."""
    workdir.mkdir(parents=True, mode=0o700)
    store = workdir / "casus.sqlite3"
    shutil.copyfile(template, store)
    store.chmod(0o600)
    rng = random.Random(seed)
    delays: list[float] = []
    counts: list[int] = []
    early = 0
    delay_range = kill_delay_range(consents)
    started = time.perf_counter()
    with running_sekmet(workdir / "sekmet") as server:
        command, env = sync_command(store, server.base_url)
        for _ in range(kills):
            delay = rng.uniform(*delay_range)
            process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                process.wait(timeout=delay)
                early += 1
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=60)
                delays.append(delay)
                counts.append(sum(1 for _ in casus_consents(server.base_url)))
        final = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
        again = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
        seconds = time.perf_counter() - started
        resources = list(casus_consents(server.base_url))
    expected: set[str] = set()
    with Store.open(f"sqlite:///{store}") as opened:
        cursor = 0
        while page := opened.form_ids_changed_since(cursor, BATCH):
            expected.update(form_id for _seq, form_id in page)
            cursor = page[-1][0]
    by_form = Counter(r["identifier"][0]["value"] for r in resources)
    return KillResume(
        consents=consents,
        kills=len(delays),
        finished_early=early,
        delay_range=delay_range,
        kill_delays=delays,
        on_server_at_kill=counts,
        final_exit=final.returncode,
        again_exit=again.returncode,
        again_summary=json.loads(again.stdout) if again.stdout.strip() else {},
        on_server=len(resources),
        identifiers_once=all(n == 1 for n in by_form.values()),
        missing=len(expected - set(by_form)),
        consents_past_version_1=sum(1 for r in resources if r["meta"]["versionId"] != "1"),
        seconds=seconds,
    )


# --------------------------------------------------------------------------- the run and its table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,20000", help="consents per batched measurement; the first is the baseline size")
    parser.add_argument("--per-resource-consents", type=int, default=1000, help="consents for the per-resource baseline (0 to skip)")
    parser.add_argument("--floor-consents", type=int, default=1000, help="consents for the raw server floor (0 to skip)")
    parser.add_argument("--kill-consents", type=int, default=1000, help="consents for the SIGKILL-and-resume check (0 to skip)")
    parser.add_argument("--kills", type=int, default=12, help="runs killed before one is left to finish")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--consents", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=BATCH, help=argparse.SUPPRESS)
    parser.add_argument("--push-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    sizes = [int(s) for s in args.sizes.split(",") if s]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        workdir = Path(tmp)
        stores = templates(workdir, {*sizes, args.per_resource_consents, args.kill_consents} - {0})
        batched: dict[int, dict[str, Any]] = {}
        for size in sizes:
            batched[size] = run_child(stores[size], workdir / f"batched-{size}", consents=size, batch_size=BATCH, push_only=False)
            print(f"(batched {size}: {json.dumps(batched[size])})", flush=True)
        single = None
        if args.per_resource_consents:
            single = run_child(
                stores[args.per_resource_consents],
                workdir / "per-resource",
                consents=args.per_resource_consents,
                batch_size=PER_RESOURCE,
                push_only=True,
            )
            print(f"(per-resource {args.per_resource_consents}: {json.dumps(single)})", flush=True)
        floor: dict[int, tuple[float, int]] = {}
        if args.floor_consents:
            forms = [synthetic_form(n, random.Random(n)) for n in range(args.floor_consents)]
            floor = {size: raw_push_seconds(forms, size, workdir / f"floor-{size}") for size in (PER_RESOURCE, BATCH)}
            print(f"(floor {args.floor_consents}: {json.dumps(floor)})", flush=True)
        resumed = None
        if args.kill_consents:
            resumed = kill_resume(stores[args.kill_consents], workdir / "kill-resume", consents=args.kill_consents, kills=args.kills, seed=args.seed)
    print(f"(whole run {time.perf_counter() - started:.0f}s, cpu count {os.cpu_count()})")
    print()
    report(sizes, batched, single, args.per_resource_consents, floor, args.floor_consents)
    if resumed is not None:
        report_kill_resume(resumed)


def row(consents: int, mode: str, seconds: float, requests: int, per_batch: str, baseline_rate: float | None) -> str:
    shown = f"{consents / seconds / baseline_rate:.2f}x" if baseline_rate else "1.00x"
    return f"| {consents:>8,} | {mode:<44} | {seconds:>8.1f} | {consents / seconds:>10.1f} | {requests:>8} | {per_batch:>17} | {shown:>8} |"


def report(
    sizes: list[int],
    batched: dict[int, dict[str, Any]],
    single: dict[str, Any] | None,
    single_consents: int,
    floor: dict[int, tuple[float, int]],
    floor_consents: int,
) -> None:
    print(f"push: fresh sekmet-fhir 0.1.1 server and a fresh copy of the store per row; batches and pull pages of {BATCH}")
    print(
        f"| {'consents':>8} | {'mode':<44} | {'seconds':>8} | {'consents/s':>10} | {'requests':>8} | {'requests per batch':>17} | {'vs first':>8} |"
    )
    print(f"|{'-' * 10}|{'-' * 46}|{'-' * 10}|{'-' * 12}|{'-' * 10}|{'-' * 19}|{'-' * 10}|")
    first_rate = None
    if single is not None:
        push = single["push"]
        print(
            row(
                single_consents,
                "per-resource (batch size 1), baseline",
                push["seconds"],
                push["requests"],
                f"{push['requests'] / max(push['pages'], 1) * BATCH:.0f} per 100",
                None,
            )
        )
        first_rate = single_consents / push["seconds"]
    for size, (seconds, sent) in sorted(floor.items()):
        mode = "server floor: raw, 1 per transaction" if size == PER_RESOURCE else f"server floor: raw, {size} per transaction"
        print(row(floor_consents, mode, seconds, sent, "-", first_rate))
    for size in sizes:
        push = batched[size]["push"]
        per_batch = f"{push['searches'] / push['pages']:.1f} s + {push['transactions'] / push['pages']:.1f} t"
        print(row(size, f"sync, transaction batches of {BATCH}", push["seconds"], push["requests"], per_batch, first_rate))
    print("(requests per batch: s = identifier look-ups, t = transactions)")
    print()
    print(
        f"| {'consents':>8} | {'first pull s':>12} | {'pull requests':>13} | {'pull pages':>10} | {'re-sync requests':>16} | "
        f"{'re-sync pages':>13} | {'searches per page':>17} | {'peak RSS MiB':>12} | {'RSS vs first':>12} |"
    )
    print(f"|{'-' * 10}|{'-' * 14}|{'-' * 15}|{'-' * 12}|{'-' * 18}|{'-' * 15}|{'-' * 19}|{'-' * 14}|{'-' * 14}|")
    low = batched[sizes[0]]["peak_rss_kib"]
    worst_per_page = 0.0
    for size in sizes:
        run = batched[size]
        pull, resync = run["first_pull"], run["resync"]
        per_page = max(p["searches"] / max(p["pages"], 1) for p in (pull, resync))
        worst_per_page = max(worst_per_page, per_page)
        print(
            f"| {size:>8,} | {pull['seconds']:>12.1f} | {pull['requests']:>13} | {pull['pages']:>10} | {resync['requests']:>16} | "
            f"{resync['pages']:>13} | {per_page:>17.2f} | {run['peak_rss_kib'] / 1024:>12.1f} | {run['peak_rss_kib'] / low:>11.2f}x |"
        )
    for size in sizes:
        walk = batched[size].get("raw_walk")
        if walk:
            pull = batched[size]["first_pull"]
            print(
                f"pull floor at {size:,}: the same search walked by next link with no sync logic took {walk['seconds']:.1f}s for "
                f"{walk['pages']:.0f} pages ({walk['seconds'] / walk['pages']:.2f}s a page; the sync's first pull "
                f"{pull['seconds'] / max(pull['pages'], 1):.2f}s a page)"
            )
    high = batched[sizes[-1]]["peak_rss_kib"]
    print(f"target: at most one search request per page of changes -> {'MET' if worst_per_page <= 1 else 'NOT MET'} (worst {worst_per_page:.2f})")
    print(f"target: peak RSS at {sizes[-1]:,} within 1.2x of {sizes[0]:,} -> {'MET' if high <= 1.2 * low else 'NOT MET'} ({high / low:.2f}x)")
    lookups = max(batched[size]["push"]["searches"] / batched[size]["push"]["pages"] for size in sizes)
    print(
        f"target: identifier look-ups cost fewer than 5 searches per batch -> {'MET' if lookups < 5 else 'NOT MET'} (worst {lookups:.1f} per batch)"
    )


def report_kill_resume(result: KillResume) -> None:
    print()
    print(
        f"SIGKILL and resume: {result.consents:,} consents, {result.kills} runs killed at random points "
        f"after {result.delay_range[0]:.1f}-{result.delay_range[1]:.1f}s ({result.finished_early} ended before their kill), "
        f"then one run to the end and one more; {result.seconds:.0f}s"
    )
    print(
        "kills at (s after start -> CASUS Consents on the server then): "
        + ", ".join(f"{d:.1f}->{n}" for d, n in zip(result.kill_delays, result.on_server_at_kill, strict=True))
    )
    again = result.again_summary
    print(
        f"final run exit {result.final_exit}; the run after it exit {result.again_exit}, pushed {again.get('pushed')}, pulled {again.get('pulled')}"
    )
    print(
        f"on the server: {result.on_server:,} CASUS Consents, each identifier once: {result.identifiers_once}, "
        f"missing {result.missing}, with more than one version {result.consents_past_version_1}"
    )
    met = (
        (result.final_exit, result.again_exit, result.on_server, result.identifiers_once, result.missing) == (0, 0, result.consents, True, 0)
        and again.get("pushed") == 0
        and again.get("pulled") == 0
    )
    print(f"target: every form on the server exactly once after SIGKILL at random points -> {'MET' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
