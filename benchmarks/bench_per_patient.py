"""The per-patient reads as the store grows, in process: one thread, no HTTP, no load generator.

Under HTTP load on a shared two-core machine the load generator, the server's threads and the neighbours
all move the numbers between rounds; here each request runs alone through the Flask app (the facade's
whole pipeline: request id, bearer token, the read, its audit row committed, the answer rendered), so
what is left to differ between sizes is what the store's size costs.

Each size gets its own SQLite store, filled as bench_decision.py fills it (``build_store``: N young people,
three versions each, through the bulk load), and is asked the decision benchmark's per-patient workloads
for its working set (``spread(size, 500)`` young people): GET /api/forms/{id}/history and
GET /fhir/Consent?patient:identifier=...|{nhs} through the app, and below them the store's reads alone
(``Store.history``, ``Store.search``) and a lone audit row (``Store.audit``).  The sizes take turns request by
request (the same working-set position in each, each size first every other time), so a neighbour's burst or
a slower stretch of the machine falls on both alike; the first round is a warm-up and is not counted.  The
first size is the baseline.

Then the two reads' SQL alone, on a plain sqlite3 connection (microseconds, no Python above the driver): as
served, where another connection commits before every read (the audit row of the request before), and with
no commit in between; each with SQLite's default page cache, a 64 MB cache and a 1 GB memory map.  This is
what engine.py's choice of cache_size and mmap_size rests on.

Run:  python benchmarks/bench_per_patient.py [--patients 500 100000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bench_decision

from fhir_adapter.access import TokenGrant
from fhir_adapter.config import Settings, hash_token
from fhir_adapter.server import create_app
from fhir_adapter.store import Store

#: The decision benchmark's workloads timed here, through the app.
ROUTES = ("history", "FHIR search by patient")
#: The statements Forms.history and Forms.search run, as SQLAlchemy renders them for SQLite.
HISTORY_SQL = "SELECT * FROM form_versions WHERE form_id = ? ORDER BY version"
SEARCH_SQL = (
    "SELECT form_versions.*, count(*) OVER () AS total FROM forms JOIN form_versions ON form_versions.form_id = forms.form_id "
    "AND form_versions.version = forms.latest_version WHERE forms.nhs_number = ? ORDER BY forms.updated_at, forms.form_id LIMIT 20 OFFSET 0"
)
#: Connection settings the raw reads compare: SQLite's defaults (what engine.py keeps), a larger cache, a memory map.
SETTINGS = {"default": (), "cache_size 64 MB": ("PRAGMA cache_size=-65536",), "mmap_size 1 GB": ("PRAGMA mmap_size=1073741824",)}


@dataclass
class Sized:
    """One size's store, its app and what each workload asks of it."""

    size: int
    store: Store
    client: Any
    asked: dict[str, list[Callable[[], object]]]
    path: str
    seconds: dict[str, list[float]] = field(default_factory=dict)


def open_size(size: int, working_set: int, folder: str) -> Sized:
    url = f"sqlite:///{os.path.join(folder, f'store_{size}.db')}"
    bench_decision.build_store(url, size)
    grant = TokenGrant("bench", hash_token(bench_decision.TOKEN), frozenset({"consent.read"}))
    store = Store.open(url)  # shared by the app and the store-level rows, as one facade process shares one
    client = create_app(Settings(database_url=url, grants=(grant,)), store=store).test_client()
    headers = {"Authorization": f"Bearer {bench_decision.TOKEN}"}
    paths = bench_decision.workloads(size, working_set)
    people = bench_decision.spread(size, working_set)

    def get(path: str) -> Callable[[], object]:
        def call() -> object:
            response = client.get(path, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"{path}: HTTP {response.status_code}")
            return response

        return call

    asked: dict[str, list[Callable[[], object]]] = {f"GET {name}": [get(p) for p in paths[name]] for name in ROUTES}
    asked["Store.history"] = [lambda n=n: store.history(bench_decision.bench_form_id(n)) for n in people]
    asked["Store.search (by NHS number)"] = [lambda n=n: store.search(nhs_number=bench_decision.nhs_number_for(n), limit=20) for n in people]
    asked["Store.audit (one row)"] = [
        lambda n=n: store.audit(actor="bench", action="form.read", resource="Consent", outcome="ok", subject=bench_decision.nhs_number_for(n))
        for n in people
    ]
    return Sized(size, store, client, asked, url.removeprefix("sqlite:///"))


def run_round(sizes: list[Sized], round_number: int) -> None:
    """Every workload once over the working set, the sizes taking turns request by request (each first every other time)."""
    for name in sizes[0].asked:
        for i in range(len(sizes[0].asked[name])):
            for sized in sizes if (i + round_number) % 2 == 0 else list(reversed(sizes)):
                started = time.perf_counter()
                sized.asked[name][i]()
                if round_number > 0:
                    sized.seconds.setdefault(name, []).append(time.perf_counter() - started)


def raw_reads(path: str, people: list[int], pragmas: tuple[str, ...], commit: Callable[[], object] | None, rounds: int) -> dict[str, list[float]]:
    """Seconds per read of each statement on a plain connection, ``commit`` (untimed) before each; the first round a warm-up."""
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in pragmas:
            reader.execute(pragma)
        keys = {"history": [bench_decision.bench_form_id(n) for n in people], "search": [bench_decision.nhs_number_for(n) for n in people]}
        seconds: dict[str, list[float]] = {}
        for name, sql in (("history", HISTORY_SQL), ("search", SEARCH_SQL)):
            times = seconds.setdefault(name, [])
            for r in range(rounds):
                for key in keys[name]:
                    if commit is not None:
                        commit()
                    started = time.perf_counter()
                    reader.execute("BEGIN")
                    if not reader.execute(sql, (key,)).fetchall():
                        raise RuntimeError(f"nothing found for {key}")
                    reader.execute("COMMIT")
                    if r > 0:
                        times.append(time.perf_counter() - started)
        return seconds
    finally:
        reader.close()


def report_raw(sizes: list[Sized], working_set: int, rounds: int) -> None:
    print(f"the SQL alone on a plain sqlite3 connection, {rounds - 1} counted rounds of the working set; microseconds per read")
    print(
        f"| {'young people':>12} | {'connection settings':<19} | {'commit before each read':<23} | "
        f"{'history mean':>12} | {'p99':>6} | {'search mean':>11} | {'p99':>6} |"
    )
    print(f"|{'-' * 14}|{'-' * 21}|{'-' * 25}|{'-' * 14}|{'-' * 8}|{'-' * 13}|{'-' * 8}|")
    for served in (True, False):
        for label, pragmas in SETTINGS.items():
            for sized in sizes:
                # As served: the request before committed its audit row, on the audit trail's own connection.
                commit = (
                    (lambda store=sized.store: store.audit(actor="bench", action="form.read", resource="Consent", outcome="ok")) if served else None
                )
                times = raw_reads(sized.path, bench_decision.spread(sized.size, working_set), pragmas, commit, rounds)
                cells = [
                    f"{statistics.mean(t) * 1e6:>{w}.0f} | {statistics.quantiles(t, n=100)[98] * 1e6:>6.0f}"
                    for t, w in ((times["history"], 12), (times["search"], 11))
                ]
                print(f"| {sized.size:>12,} | {label:<19} | {'yes (as served)' if served else 'no':<23} | {cells[0]} | {cells[1]} |")


def report(sizes: list[Sized], rounds: int, working_set: int, loads: tuple[str, str]) -> None:
    print(
        f"in process, one thread, {rounds - 1} counted rounds (after one warm-up) of every workload, the sizes taking turns request by request; "
        f"working set: {working_set} young people per size; load average {loads[0]} at the start, {loads[1]} at the end"
    )
    print(
        f"| {'young people':>12} | {'workload':<30} | {'mean ms':>7} | {'p50 ms':>6} | {'p99 ms':>6} | {'mean vs first':>13} | {'p99 vs first':>12} |"
    )
    print(f"|{'-' * 14}|{'-' * 32}|{'-' * 9}|{'-' * 8}|{'-' * 8}|{'-' * 15}|{'-' * 14}|")
    first = sizes[0]
    for name in first.seconds:
        base = first.seconds[name]
        base_mean, base_p99 = statistics.mean(base), statistics.quantiles(base, n=100)[98]
        for sized in sizes:
            times = sized.seconds[name]
            mean, q = statistics.mean(times), statistics.quantiles(times, n=100)
            print(
                f"| {sized.size:>12,} | {name:<30} | {mean * 1000:>7.3f} | {q[49] * 1000:>6.3f} | {q[98] * 1000:>6.3f} | "
                f"{mean / base_mean:>13.2f} | {q[98] / base_p99:>12.2f} |"
            )


def load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, nargs="+", default=[500, 100_000], help="store sizes in young people; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of every workload per size, the first a warm-up")
    args = parser.parse_args(argv)
    if args.rounds < 2 or min(args.patients) < 1:
        parser.error("--rounds must be at least 2 and every size at least 1")
    working_set = min(bench_decision.WORKING_SET, min(args.patients))
    with tempfile.TemporaryDirectory() as folder:
        sizes = []
        for size in args.patients:
            started = time.perf_counter()
            sizes.append(open_size(size, working_set, folder))
            print(f"sqlite: {size} young people loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        try:
            start_load = load_average()
            for r in range(args.rounds):
                run_round(sizes, r)
            loads = (start_load, load_average())
            report(sizes, args.rounds, working_set, loads)
            report_raw(sizes, working_set, min(args.rounds, 4))
        finally:
            for sized in sizes:
                sized.store.close()


if __name__ == "__main__":
    main()
