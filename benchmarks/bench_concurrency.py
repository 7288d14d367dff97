"""One serving process as clients are added: requests taking turns (the default) against every thread running at once.

``fhir-adapter serve`` is started twice on one store filled by the store's bulk load (``--patients`` young
people, see bench_decision.py), with ``--threads`` waitress threads each: once as it is served by default,
one request running at a time (``CASUS_RUNNING_REQUESTS=1``), and once with as many running at once as it
has threads (the baseline: every thread computing together, as before turns).  Both take turns, round by
round, under 1, 2, 4 and 8 client processes with persistent connections asking the working-set questions
(bench_decision.py's lean load generator).  A client count whose p99 is over the decision endpoint's budget
(10 ms) is still shown: how far each degrades is the point.

With ``--workers N`` every server has N worker processes, and each takes turns on its own.

Run:  python benchmarks/bench_concurrency.py [--clients 1 2 4 8] [--threads 8] [--workers 1] [--patients 500] [--postgres]
      [--seconds 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decision import build_store, load, median_round, new_database, pooled_p99, postgres_cluster, questions_about, spread
from bench_workers import P99_BUDGET_MS, serve, stop_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8], help="client counts, each a load level")
    parser.add_argument("--threads", type=int, default=8, help="waitress threads per process (fhir-adapter serve's default: 8)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per server")
    parser.add_argument("--patients", type=int, default=500, help="young people in the store (all asked about)")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument("--seconds", type=float, default=4, help="length of one round of load")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server and client count, taken in turns")
    args = parser.parse_args()
    paths = questions_about(spread(args.patients, args.patients))
    backend = "postgresql" if args.postgres else "sqlite"
    modes = {"one at a time": "1", "all threads at once": str(args.threads)}
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    rounds: dict[tuple[str, int], list[dict[str, Any]]] = {}
    cluster = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cluster = postgres_cluster() if args.postgres else None
            url = new_database(backend, "bench_concurrency", tmp, cluster)
            build_store(url, args.patients)
            for mode, running in modes.items():
                servers[mode] = serve(url, args.workers, args.threads, tmp, {"CASUS_RUNNING_REQUESTS": running})
            for _, port in servers.values():
                load(port, paths, max(args.clients), 2, "lean")  # every process's patient cache filled
            for _ in range(args.rounds):
                for clients in args.clients:
                    for mode, (_, port) in servers.items():
                        rounds.setdefault((mode, clients), []).append(load(port, paths, clients, args.seconds, "lean"))
        finally:
            stop_all([process for process, _ in servers.values()], cluster)
    print(
        f"{backend}, {args.workers} worker process(es) x {args.threads} waitress threads, lean clients, {args.rounds} rounds of "
        f"{args.seconds:g} s per server and client count in turns (median round; p99 over every request of every round), "
        f"{len(paths)} questions about {args.patients} young people, cpu count {os.cpu_count()}"
    )
    print(
        f"| {'clients':>7} | {'requests running':<20} | {'req/s':>6} | {'vs 1 client':>11} | {'p50 ms':>6} | {'p99 ms':>6} "
        f"| {'p99 in budget':>13} | {'errors':>6} |"
    )
    print(f"|{'-' * 9}|{'-' * 22}|{'-' * 8}|{'-' * 13}|{'-' * 8}|{'-' * 8}|{'-' * 15}|{'-' * 8}|")
    for clients in args.clients:
        for mode in modes:
            runs, first = rounds[(mode, clients)], median_round(rounds[(mode, args.clients[0])])
            r, p99 = median_round(runs), pooled_p99(runs)
            print(
                f"| {clients:>7} | {mode:<20} | {r['rps']:>6.0f} | {r['rps'] / first['rps']:>10.2f}x | {r['p50']:>6.2f} | {p99:>6.2f} "
                f"| {'yes' if p99 < P99_BUDGET_MS else 'no':>13} | {sum(run['errors'] for run in runs):>6} |"
            )


if __name__ == "__main__":
    main()
