"""Decision endpoint under load on 127.0.0.1, beside a bare WSGI floor under the same server.

Three servers, all waitress with the same thread count, started as subprocesses:
  * the facade (create_app on a SQLite store holding the example forms), asked GET /api/decision
    (bearer token, parameters checked, patient's versions revalidated, verdict, audit row journaled);
  * the same facade with its decision fast path switched off, so every request goes through Flask's
    dispatch (for reference: what the fast path buys);
  * the floor: a bare WSGI app answering the facade's response from a dict (no routing, no auth, no
    store) -- the same body and the same headers, security headers and request id included, because the
    load generator shares the machine's two cores and parsing ten headers instead of two costs it (and so
    every server measured) about a tenth of its throughput;
  * for reference, the same floor sending only a Content-Type header (shows what the response headers alone
    cost the load generator).
The load generator runs in separate processes, each with persistent HTTP/1.1 connections, for a fixed
time, and records every request's latency.  The servers take turns for ``--rounds`` rounds, so a noisy
neighbour on the machine hits all of them alike; the table gives each server's median round (by rate).
Targets: the facade's p99 under 10 ms (over every request of every round) and its median round
at least 60% of the floor's median round, in requests per second.

With ``--patients N`` the store also holds N synthetic young people (the mapping benchmark's six-person
form, each with its own NHS number) and the clients cycle through three questions about each of them plus
one in ten about unknown patients, instead of asking one question over and over: the facade's caches then
see a working set, and the floor answers each question's own response from its dict.

Run:  python benchmarks/bench_decision.py [--seconds 10] [--rounds 3] [--clients 2] [--threads 2] [--patients 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789abcdef"
QUERY = "/api/decision?" + urlencode({"patient": "9434765919", "recipient-role": "mother",
                                      "information-type": "attendance", "purpose": "TREAT"})

FACADE = textwrap.dedent("""
    import json, sys, waitress
    from pathlib import Path
    sys.path.insert(0, "benchmarks")
    from bench_decision import bench_form
    from fhir_adapter.access import TokenGrant
    from fhir_adapter.config import Settings, hash_token
    from fhir_adapter.form import PROFILES_DIR, parse_form
    from fhir_adapter.server import create_app
    port, threads, db, token, route, patients = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
    app = create_app(Settings(database_url=f"sqlite:///{db}", grants=(TokenGrant("bench", hash_token(token), frozenset({"decision.read"})),)))
    service = app.extensions["casus"]
    for path in sorted((PROFILES_DIR / "examples").glob("form-*.json")):
        service.create(parse_form(json.loads(path.read_text())), actor="bench")
    for n in range(patients):
        service.create(bench_form(n), actor="bench")
    if route == "flask":
        app.wsgi_app = app.wsgi_app.fallback  # the fast path's own hand-over target: Flask's dispatch
    waitress.serve(app, host="127.0.0.1", port=port, threads=threads, _quiet=True)
""")

FLOOR = textwrap.dedent("""
    import json, sys, waitress
    port, threads, answers_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    ANSWERS = {path: (body.encode(), [tuple(h) for h in headers])
               for path, (body, headers) in json.loads(open(answers_file).read()).items()}
    def app(environ, start_response):
        payload, fixed = ANSWERS[environ["PATH_INFO"] + "?" + environ["QUERY_STRING"]]
        start_response("200 OK", [*fixed, ("Content-Length", str(len(payload)))])
        return [payload]
    waitress.serve(app, host="127.0.0.1", port=port, threads=threads, _quiet=True)
""")
#: A floor with only a Content-Type header (no security headers, no request id): what the headers alone cost.
MINIMAL_HEADERS = [("Content-Type", "application/json")]
#: Added by waitress itself to every response, the floor's included.
SERVER_HEADERS = {"content-length", "date", "server", "connection"}


def bench_form(n: int) -> Any:
    """Young person n: the mapping benchmark's six-person form with its own id and NHS number."""
    from bench_mapping import realistic_form

    form = realistic_form(n)
    young = dataclasses.replace(form.young_person, nhs_number=nhs_number_for(n))
    return dataclasses.replace(form, form_id=str(uuid.UUID(int=10**6 + n, version=4)), young_person=young)


def nhs_number_for(n: int) -> str:
    rng = random.Random(n)
    while True:  # about one draw in eleven has no check digit
        first = "".join(rng.choice("0123456789") for _ in range(9))
        total = sum(int(d) * w for d, w in zip(first, range(10, 1, -1), strict=True))
        digit = 11 - total % 11
        if digit != 10:
            return first + str(0 if digit == 11 else digit)


def questions(patients: int) -> list[str]:
    """The request paths the clients cycle through (fixed order, so every run asks the same)."""
    if patients == 0:
        return [QUERY]
    from bench_mapping import ROLES, TYPES

    paths = []
    for n in range(patients):
        for i in range(3):  # the roles and types of people 0-2 on form n (see realistic_form)
            paths.append("/api/decision?" + urlencode({"patient": nhs_number_for(n), "recipient-role": ROLES[(n + i) % len(ROLES)],
                                                       "information-type": TYPES[(n + i) % len(TYPES)], "purpose": "TREAT"}))
        if n % 10 == 0:
            paths.append("/api/decision?" + urlencode({"patient": nhs_number_for(10**7 + n), "recipient-role": "mother",
                                                       "information-type": "attendance", "purpose": "TREAT"}))
    random.Random(0).shuffle(paths)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(script: str, args: list[str], port: int, log_dir: str) -> subprocess.Popen:
    # stderr to a file, not a pipe: waitress warns when its task queue grows ("Task queue depth is N"), and
    # a pipe nobody reads fills up and stops the server in the middle of a round.
    with open(os.path.join(log_dir, f"server-{port}.log"), "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-c", script, str(port), *args], cwd=REPO, stderr=log_file)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            if process.poll() is not None:
                log = Path(log_dir, f"server-{port}.log").read_text(errors="replace")
                raise SystemExit(f"server failed: {log[-2000:]}") from None
            time.sleep(0.1)
    process.kill()
    raise SystemExit("server did not start")


def one_request(conn: http.client.HTTPConnection, path: str) -> bytes:
    return one_response(conn, path)[0]


def one_response(conn: http.client.HTTPConnection, path: str) -> tuple[bytes, list[tuple[str, str]]]:
    conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}")
    return body, response.getheaders()


def client_worker(port: int, paths: list[str], offset: int, seconds: float, queue: multiprocessing.Queue) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies, errors, i = [], 0, offset
    for _ in range(20):  # warm-up
        one_request(conn, paths[i % len(paths)])
        i += 1
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        path = paths[i % len(paths)]
        i += 1
        started = time.perf_counter()
        try:
            one_request(conn, path)
            latencies.append(time.perf_counter() - started)
        except (RuntimeError, OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    queue.put((latencies, errors))


def load(port: int, paths: list[str], clients: int, seconds: float) -> dict[str, Any]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=client_worker, args=(port, paths, c * len(paths) // clients, seconds, queue))
               for c in range(clients)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=seconds + 60) for _ in workers]
    for w in workers:
        w.join(timeout=10)
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = sum(e for _, e in results)
    q = statistics.quantiles(latencies, n=100)
    return {"rps": len(latencies) / seconds, "p50": q[49] * 1000, "p99": q[98] * 1000, "max": latencies[-1] * 1000,
            "requests": len(latencies), "errors": errors, "latencies": latencies}


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=10)


def pooled_p99(rounds: list[dict[str, Any]]) -> float:
    """The 99th percentile of every request of every round, in ms: the run's p99."""
    return statistics.quantiles([x for r in rounds for x in r["latencies"]], n=100)[98] * 1000


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(rounds, key=lambda r: r["rps"])[len(rounds) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="length of one round of load")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server, taken in turns")
    # Default: one client process per core -- enough to saturate the server (one GIL-bound process at a full
    # core) without the load generator itself oversubscribing the machine; --clients 4 --threads 4 shows that case.
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes (one connection each)")
    parser.add_argument("--threads", type=int, default=2, help="waitress threads in every server")
    parser.add_argument("--patients", type=int, default=0, help="synthetic young people asked about (0: one question, repeated)")
    args = parser.parse_args()
    paths = questions(args.patients)
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    names = {"floor": "floor: bare WSGI, same response from a dict",
             "floor-minimal": "floor with only a Content-Type header",
             "facade": "facade: GET /api/decision (fast path)",
             "flask": "facade, fast path off (Flask dispatch)"}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for route in ("facade", "flask"):
                port = free_port()
                servers[route] = start(FACADE, [str(args.threads), os.path.join(tmp, f"{route}.db"), TOKEN, route,
                                                str(args.patients)], port, tmp), port
            facade = http.client.HTTPConnection("127.0.0.1", servers["facade"][1], timeout=10)
            flask = http.client.HTTPConnection("127.0.0.1", servers["flask"][1], timeout=10)
            answers: dict[str, tuple[str, list[tuple[str, str]]]] = {}
            for path in paths:  # every question once: the floor's dict, and the fast path checked against Flask
                body, headers = one_response(facade, path)
                assert one_request(flask, path) == body, f"the fast path and Flask must answer alike: {path}"
                # The floor sends the facade's very bytes: same body, same headers (its request id included),
                # so the load generator, which shares the two cores, parses the same response from each.
                answers[path] = body.decode(), [(k, v) for k, v in headers if k.lower() not in SERVER_HEADERS]
            facade.close()
            flask.close()
            assert json.loads(answers[paths[0]][0])["decision"] in ("permit", "deny")
            for name, minimal in (("floor", False), ("floor-minimal", True)):
                answers_file = Path(tmp) / f"{name}.json"
                answers_file.write_text(json.dumps({path: (body, MINIMAL_HEADERS if minimal else headers)
                                                    for path, (body, headers) in answers.items()}))
                port = free_port()
                servers[name] = start(FLOOR, [str(args.threads), str(answers_file)], port, tmp), port
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for _ in range(args.rounds):
                for name in names:
                    rounds[name].append(load(servers[name][1], paths, args.clients, args.seconds))
        finally:
            for process, _ in servers.values():
                stop(process)
    results = {name: median_round(r) for name, r in rounds.items()}
    asked = "one question, repeated" if args.patients == 0 else f"{len(paths)} questions about {args.patients} young people, cycled"
    print(f"{args.clients} client processes, waitress {args.threads} threads, {args.rounds} rounds of {args.seconds:.0f} s "
          f"per server in turns (median round shown), {asked}, cpu count {os.cpu_count()}")
    print(f"| {'server':<44} | {'req/s':>7} | {'vs floor':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'max ms':>7} | {'errors':>6} |")
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 8}|")
    for name, label in names.items():
        r = results[name]
        share = r["rps"] / results["floor"]["rps"]
        print(f"| {label:<44} | {r['rps']:>7.0f} | {share:>8.0%} | {r['p50']:>7.2f} | {r['p99']:>7.2f} | {r['max']:>7.1f} | {r['errors']:>6.0f} |")
    app, bare = results["facade"], results["floor"]
    share = app["rps"] / bare["rps"]
    p99 = pooled_p99(rounds["facade"])
    worst = max(r["p99"] for r in rounds["facade"])
    print(f"facade throughput = {share:.1%} of the floor (target >= 60%): {'MET' if share >= 0.6 else 'NOT MET'}; "
          f"p99 over all {sum(r['requests'] for r in rounds['facade']):.0f} requests {p99:.2f} ms (worst round {worst:.2f}) "
          f"(target < 10 ms): {'MET' if p99 < 10 else 'NOT MET'}")


if __name__ == "__main__":
    main()
