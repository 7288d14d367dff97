"""Decisions from one vs several worker processes (`fhir-adapter serve --workers N`), on SQLite and PostgreSQL.

Each backend gets one store filled by the store's bulk load (``--patients`` young people, three versions
each, see bench_decision.py); ``fhir-adapter serve`` is started on it once per worker count, as an operator
would run it, and all servers take turns, round by round, each under the same load per worker process:
``--clients-per-worker`` load-generator processes for each worker (2: the load at which the decision endpoint's
targets are set, bench_decision.py), with persistent connections asking the working-set questions of
bench_decision.py.  (With a fixed number of clients, one worker would be measured with requests queueing
behind one another and its p99 would be the queue's, not the endpoint's.)  Before the first round each server
gets ``--warm-up`` seconds of the same load, not measured, so that every worker process has read the working
set's versions into its patient cache (each process has its own): the rounds measure decisions in a
steady state, as bench_decision.py's do (it asks every question once before its rounds); what a question
whose patient is not cached costs is bench_decision.py's "decisions, cold" workload.  The
load generator shares the machine's cores with the servers, so on a 2-core machine two workers and the
clients compete for the same two cores (and, on PostgreSQL, so does the database server).  On Linux each row
also gives the CPU used per request by the serve processes, the database server's processes and the clients
(from /proc and the reaped clients' rusage), and the rate those costs allow: all cores' worth of CPU, and at
most one core per worker process for the server's part.
Target: two workers >= 1.7x one worker's req/s at the same p99 budget: the decision endpoint's, p99 under
10 ms (bench_decision.py), for every worker count.

Run:  python benchmarks/bench_workers.py [--workers 1 2] [--patients 500] [--postgres] [--seconds 5] [--rounds 3] [--clients-per-worker 2]
      [--warm-up 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decision import (
    CLIENTS,
    REPO,
    TOKEN,
    build_store,
    free_port,
    load,
    measured_round,
    median_round,
    new_database,
    pooled_p99,
    postgres_cluster,
    postmaster_pid,
    questions_about,
    spread,
)

from tests.support.processes import stop_process

#: The decision endpoint's p99 budget, which every worker count must keep.
P99_BUDGET_MS = 10.0


def serve(url: str, workers: int, threads: int, log_dir: str, settings: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """``fhir-adapter serve`` on ``url``, with ``settings`` (environment variables) beside the database and token."""
    port = free_port()
    env = {
        **os.environ,
        "CASUS_DATABASE_URL": url,
        "CASUS_TOKENS": json.dumps([{"name": "bench", "token": TOKEN, "scopes": ["decision.read"]}]),
        **(settings or {}),
    }
    with open(os.path.join(log_dir, f"serve-{port}.log"), "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "fhir_adapter", "serve", "--port", str(port), "--threads", str(threads), "--workers", str(workers)],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=log_file,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, port
        except OSError:
            if process.poll() is not None:
                raise SystemExit(Path(log_dir, f"serve-{port}.log").read_text(errors="replace")[-2000:]) from None
            time.sleep(0.1)
    stop_process(process)
    raise SystemExit("serve did not start")


def stop_all(processes: list[subprocess.Popen[bytes]], cluster: Any) -> None:
    """Stop the servers, then the PostgreSQL cluster they used (None: SQLite only)."""
    for process in processes:
        stop_process(process)
    if cluster is not None:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts compared; the first is the baseline")
    parser.add_argument("--patients", type=int, default=500, help="young people in the store (all asked about)")
    parser.add_argument("--seconds", type=float, default=5, help="length of one round of load")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server, taken in turns")
    parser.add_argument("--clients-per-worker", type=int, default=2, help="load-generator processes (one connection each) per worker process")
    parser.add_argument("--threads", type=int, default=2, help="waitress threads in each worker process")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL too, beside SQLite")
    parser.add_argument(
        "--warm-up", type=float, default=3, help="seconds of the same load per server, not measured, before the first round (0: none)"
    )
    # lean by default: the clients share the two cores with the workers, and every microsecond they spend
    # parsing responses is one the second worker cannot have.
    parser.add_argument("--client", choices=sorted(CLIENTS), default="lean", help="the load generator's HTTP client (bench_decision.CLIENTS)")
    args = parser.parse_args()
    paths = questions_about(spread(args.patients, args.patients))
    backends = ["sqlite", "postgresql"] if args.postgres else ["sqlite"]
    servers: dict[tuple[str, int], tuple[subprocess.Popen[bytes], int]] = {}
    rounds: dict[tuple[str, int], list[dict[str, Any]]] = {}
    cluster = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cluster = postgres_cluster() if args.postgres else None
            for backend in backends:
                url = new_database(backend, "bench_workers", tmp, cluster)
                build_store(url, args.patients)
                for workers in args.workers:
                    servers[(backend, workers)] = serve(url, workers, args.threads, tmp)
            database = postmaster_pid(cluster)
            for (_, workers), (_, port) in servers.items() if args.warm_up > 0 else ():
                load(port, paths, args.clients_per_worker * workers, args.warm_up, args.client)
            for _ in range(args.rounds):
                for key, (process, port) in servers.items():
                    load_for = argparse.Namespace(**vars(args), clients=args.clients_per_worker * key[1])
                    measured = measured_round(port, paths, load_for, process.pid, database if key[0] == "postgresql" else None)
                    rounds.setdefault(key, []).append(measured)
        finally:
            stop_all([process for process, _ in servers.values()], cluster)
    print(
        f"{args.clients_per_worker} client processes per worker ({args.client}), waitress {args.threads} threads per worker, "
        f"{args.warm_up:g} s of warm-up then {args.rounds} rounds of {args.seconds:g} s per server in turns "
        "(median round shown; p99 over every request of every round), "
        f"{len(paths)} questions about "
        f"{args.patients} young people, cpu count {os.cpu_count()}"
    )
    print(
        f"| {'database':<10} | {'workers':>7} | {'req/s':>6} | {'vs first':>8} | {'p50 ms':>6} | {'p99 ms':>6} | {'max ms':>7} | {'errors':>6} "
        f"| {'CPU µs/request: server':>22} | {'database':>8} | {'clients':>7} | {'all':>5} | {'CPU-bound req/s':>15} |"
    )
    print(f"|{'-' * 12}|{'-' * 9}|{'-' * 8}|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 9}|{'-' * 8}|{'-' * 24}|{'-' * 10}|{'-' * 9}|{'-' * 7}|{'-' * 17}|")
    for (backend, workers), runs in rounds.items():
        r, base = median_round(runs), median_round(rounds[(backend, args.workers[0])])
        print(
            f"| {backend:<10} | {workers:>7} | {r['rps']:>6.0f} | {r['rps'] / base['rps']:>7.2f}x | {r['p50']:>6.2f} | "
            f"{pooled_p99(runs):>6.2f} | {r['max']:>7.1f} | {r['errors']:>6.0f} | {_cpu_columns(r, workers)} |"
        )
    for backend in backends:
        base, best = rounds[(backend, args.workers[0])], rounds[(backend, args.workers[-1])]
        gain = median_round(best)["rps"] / median_round(base)["rps"]
        within = max(pooled_p99(best), pooled_p99(base)) < P99_BUDGET_MS
        print(
            f"{backend}: {args.workers[-1]} workers = {gain:.2f}x {args.workers[0]} (target >= 1.7x), p99 {pooled_p99(best):.2f} ms "
            f"vs {pooled_p99(base):.2f} ms (budget < {P99_BUDGET_MS:g} ms): {'MET' if gain >= 1.7 and within else 'NOT MET'}"
        )


def _cpu_columns(r: dict[str, Any], workers: int) -> str:
    """CPU per request by part, and the rate the machine's cores could give at that cost: all cores, and no more
    than one core per worker process for the server's part (a process runs one request's Python at a time)."""
    cpu = r.get("cpu_us")
    if not cpu:
        return f"{'-':>22} | {'-':>8} | {'-':>7} | {'-':>5} | {'-':>15}"
    total = sum(cpu.values())
    bound = min((os.cpu_count() or 1) / total, workers / cpu["server"]) * 1e6
    return f"{cpu['server']:>22.0f} | {cpu['database']:>8.0f} | {cpu['clients']:>7.0f} | {total:>5.0f} | {bound:>15.0f}"


if __name__ == "__main__":
    main()
