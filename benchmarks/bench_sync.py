"""Sync throughput against a real FHIR R4 server (sekmet-fhir on loopback), batched vs one request per consent.

Measured in one run, each measurement on a fresh server and a fresh copy of the same pre-filled store:

* push of N consents with transaction batches of 100 (``SyncJob(batch_size=100)``) vs one transaction per consent
  (``batch_size=1``: the same code path, one identifier search and one single-entry transaction per form);
* after the batched push, the first pull (it walks our own N pushes as echoes) and then a no-change re-sync:
  requests made, pages of changes walked, and search requests per page (target: at most one);
* peak RSS of the sync process at each size (the sync runs in a child process per measurement, which reports
  its own ``VmHWM`` from /proc/self/status; the store is filled beforehand by the parent so filling it does not
  count).  Target: memory flat in the number of consents.

Target: batched push at least 5x faster than per-resource.

Run:  python benchmarks/bench_sync.py [--consents 5000] [--per-resource-consents 5000] [--rss-sizes 1000,5000]
(needs sekmet-fhir; installed on first use into $CASUS_SEKMET_VENV or .cache/sekmet-venv, like the test suite).
Not run by the test suite.  Privacy: synthetic forms only; nothing but counts and timings is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the sekmet start/stop helpers live in the test support package

from bench_mapping import realistic_form  # noqa: E402  (same directory: the mapping benchmark's typical form)

from fhir_adapter import nhs_number  # noqa: E402
from fhir_adapter.fhir_client import FhirClient, identifier_query  # noqa: E402
from fhir_adapter.form import ConsentForm  # noqa: E402
from fhir_adapter.mappings import codes  # noqa: E402
from fhir_adapter.mappings.r4 import form_to_r4  # noqa: E402
from fhir_adapter.store import Store  # noqa: E402
from fhir_adapter.sync import SyncJob, SyncSummary  # noqa: E402
from tests.support.fhir_server import running_sekmet  # noqa: E402

BATCH = 100
PER_RESOURCE = 1
PAGE_SIZE = 100
CHILD_TIMEOUT_S = 1800


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
    """'search' (GET on a resource type), 'transaction' (POST to the base) or 'other'.

    >>> request_kind("GET", "http://h/fhir/Consent?identifier=x", "/fhir"), request_kind("POST", "http://h/fhir", "/fhir")
    ('search', 'transaction')
    """
    path = urlsplit(url).path.rstrip("/")
    if method.upper() == "POST" and path == base_path:
        return "transaction"
    rest = path.removeprefix(base_path).strip("/").split("/")
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
        for form in forms:
            store.create_form(form, actor="bench")
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
    return json.loads(done.stdout.strip().splitlines()[-1])


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


def rate(phase: dict[str, Any], consents: int) -> float:
    return consents / phase["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--consents", type=int, default=5000)
    parser.add_argument("--per-resource-consents", type=int, default=5000)
    parser.add_argument("--rss-sizes", default="1000,5000")
    parser.add_argument("--floor-consents", type=int, default=1000, help="consents for the raw server floor (0 to skip)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=BATCH, help=argparse.SUPPRESS)
    parser.add_argument("--push-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    rss_sizes = sorted({int(s) for s in args.rss_sizes.split(",") if s} | {args.consents})
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        workdir = Path(tmp)
        stores = templates(workdir, {*rss_sizes, args.per_resource_consents})
        batched = {size: run_child(stores[size], workdir / f"batched-{size}", consents=size, batch_size=BATCH, push_only=False) for size in rss_sizes}
        single = run_child(
            stores[args.per_resource_consents], workdir / "per-resource", consents=args.per_resource_consents, batch_size=PER_RESOURCE, push_only=True
        )
        floor: dict[int, tuple[float, int]] = {}
        if args.floor_consents:
            forms = [synthetic_form(n, random.Random(n)) for n in range(args.floor_consents)]
            floor = {size: raw_push_seconds(forms, size, workdir / f"floor-{size}") for size in (PER_RESOURCE, BATCH)}
    report(args.consents, args.per_resource_consents, batched, single)
    if floor:
        report_floor(args.floor_consents, floor)


def report_floor(consents: int, floor: dict[int, tuple[float, int]]) -> None:
    print()
    print(f"server floor: {consents} pre-mapped Consents POSTed as conditional-PUT transactions, no sync logic (fresh server each)")
    print(f"| {'consents':>8} | {'mode':<36} | {'seconds':>8} | {'consents/s':>10} | {'requests':>8} | {'speed-up':>8} |")
    print(f"|{'-' * 10}|{'-' * 38}|{'-' * 10}|{'-' * 12}|{'-' * 10}|{'-' * 10}|")
    single_seconds = floor[PER_RESOURCE][0]
    for size, (seconds, sent) in sorted(floor.items()):
        mode = "raw, 1 Consent per transaction" if size == PER_RESOURCE else f"raw, {size} Consents per transaction"
        print(f"| {consents:>8} | {mode:<36} | {seconds:>8.1f} | {consents / seconds:>10.1f} | {sent:>8} | {single_seconds / seconds:>7.2f}x |")


def report(consents: int, per_resource_consents: int, batched: dict[int, dict[str, Any]], single: dict[str, Any]) -> None:
    main_run = batched[consents]
    batched_rate, single_rate = rate(main_run["push"], consents), rate(single["push"], per_resource_consents)
    speedup = batched_rate / single_rate
    print(f"push: fresh sekmet-fhir 0.1.1 server and a fresh copy of the store per row; pull page size {PAGE_SIZE}")
    print(f"| {'consents':>8} | {'mode':<36} | {'seconds':>8} | {'consents/s':>10} | {'requests':>8} | {'speed-up':>8} |")
    print(f"|{'-' * 10}|{'-' * 38}|{'-' * 10}|{'-' * 12}|{'-' * 10}|{'-' * 10}|")
    rows = [
        (per_resource_consents, "per-resource (batch size 1)", single["push"], "1.00x"),
        (consents, f"transaction batches of {BATCH}", main_run["push"], f"{speedup:.2f}x"),
    ]
    for count, mode, phase, shown in rows:
        print(f"| {count:>8} | {mode:<36} | {phase['seconds']:>8.1f} | {rate(phase, count):>10.1f} | {phase['requests']:>8} | {shown:>8} |")
    for size, run in sorted(batched.items()):
        push = run["push"]
        print(
            f"push of {size} batched: {push['searches']} identifier searches + {push['transactions']} transactions "
            f"for {push['pages']} batches ({push['searches'] / max(push['pages'], 1):.1f} searches per batch)"
        )
    print(f"per-resource push of {per_resource_consents}: {single['push']['searches']} searches + {single['push']['transactions']} transactions")
    verdict = "MET" if speedup >= 5 else "NOT MET"
    note = "" if per_resource_consents == consents else f" (per-resource measured on {per_resource_consents}, rates compared)"
    print(f"target: batched >= 5x per-resource -> {verdict} ({speedup:.2f}x){note}")
    print()
    for label in ("first_pull", "resync"):
        phase = main_run[label]
        per_page = phase["searches"] / phase["pages"] if phase["pages"] else float(phase["searches"])
        name = "first pull after the push (our own pushes, seen as echoes)" if label == "first_pull" else "no-change re-sync"
        print(
            f"{name}: {phase['requests']} requests ({phase['searches']} searches) for {phase['pages']} page(s) of changes, "
            f"{per_page:.2f} search requests per page, {phase['seconds']:.1f}s"
        )
    worst = max((main_run[p]["searches"] / main_run[p]["pages"]) for p in ("first_pull", "resync") if main_run[p]["pages"])
    print(f"target: at most one search request per page of changes -> {'MET' if worst <= 1 else 'NOT MET'} (worst {worst:.2f})")
    print()
    print(f"| {'consents':>8} | {'RSS before sync (MiB)':>21} | {'peak RSS of the sync (MiB)':>26} |")
    print(f"|{'-' * 10}|{'-' * 23}|{'-' * 28}|")
    for size, run in sorted(batched.items()):
        print(f"| {size:>8} | {run['baseline_rss_kib'] / 1024:>21.1f} | {run['peak_rss_kib'] / 1024:>26.1f} |")
    sizes = sorted(batched)
    low, high = batched[sizes[0]]["peak_rss_kib"], batched[sizes[-1]]["peak_rss_kib"]
    growth = (high - low) / low
    print(
        f"target: memory flat in the number of consents -> {'MET' if growth <= 0.10 else 'NOT MET'} "
        f"(peak {growth:+.1%} from {sizes[0]} to {sizes[-1]} consents)"
    )


if __name__ == "__main__":
    main()
