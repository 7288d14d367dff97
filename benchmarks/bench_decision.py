"""Decision endpoint under load on 127.0.0.1, beside a bare WSGI floor under the same server.

Both servers are waitress with the same thread count, started as subprocesses:
  * the facade (create_app on a SQLite store holding the example forms), asked GET /api/decision;
  * a bare WSGI app that answers the same JSON bytes from a dict (no routing, no auth, no store).
The load generator runs in separate processes, each with persistent HTTP/1.1 connections, for a fixed
time, and records every request's latency.  Targets (issue 3): p99 under 10 ms, and at least 60% of the
floor's requests per second.

Run:  python benchmarks/bench_decision.py [--seconds 10] [--clients 4] [--threads 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789abcdef"
QUERY = "/api/decision?" + urlencode({"patient": "9434765919", "recipient-role": "mother",
                                      "information-type": "attendance", "purpose": "TREAT"})

FACADE = textwrap.dedent("""
    import json, sys, waitress
    from pathlib import Path
    from fhir_adapter.access import TokenGrant
    from fhir_adapter.config import Settings, hash_token
    from fhir_adapter.form import PROFILES_DIR, parse_form
    from fhir_adapter.server import create_app
    port, threads, db, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    app = create_app(Settings(database_url=f"sqlite:///{db}", grants=(TokenGrant("bench", hash_token(token), frozenset({"decision.read"})),)))
    for path in sorted((PROFILES_DIR / "examples").glob("form-*.json")):
        app.extensions["casus"].create(parse_form(json.loads(path.read_text())), actor="bench")
    waitress.serve(app, host="127.0.0.1", port=port, threads=threads, _quiet=True)
""")

FLOOR = textwrap.dedent("""
    import sys, waitress
    port, threads, body = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
    ANSWERS = {"decision": body}
    def app(environ, start_response):
        payload = ANSWERS["decision"]
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return [payload]
    waitress.serve(app, host="127.0.0.1", port=port, threads=threads, _quiet=True)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(script: str, args: list[str], port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", script, str(port), *args], cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"server failed: {process.stderr.read().decode()[-2000:]}") from None
            time.sleep(0.1)
    process.kill()
    raise SystemExit("server did not start")


def one_request(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}")
    return body


def client_worker(port: int, path: str, seconds: float, queue: multiprocessing.Queue) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies, errors = [], 0
    for _ in range(20):  # warm-up
        one_request(conn, path)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            one_request(conn, path)
            latencies.append(time.perf_counter() - started)
        except (RuntimeError, OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    queue.put((latencies, errors))


def load(port: int, path: str, clients: int, seconds: float) -> dict[str, float]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=client_worker, args=(port, path, seconds, queue)) for _ in range(clients)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=seconds + 60) for _ in workers]
    for w in workers:
        w.join(timeout=10)
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = sum(e for _, e in results)
    q = statistics.quantiles(latencies, n=100)
    return {"rps": len(latencies) / seconds, "p50": q[49] * 1000, "p99": q[98] * 1000, "max": latencies[-1] * 1000,
            "requests": len(latencies), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=4, help="load-generator processes (one connection each)")
    parser.add_argument("--threads", type=int, default=4, help="waitress threads in both servers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        facade_port = free_port()
        facade = start(FACADE, [str(args.threads), os.path.join(tmp, "bench.db"), TOKEN], facade_port)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", facade_port, timeout=10)
            body = one_request(conn, QUERY)
            assert json.loads(body)["decision"] == "permit", body
            conn.close()
            app = load(facade_port, QUERY, args.clients, args.seconds)
        finally:
            facade.terminate()
            facade.wait(timeout=10)
        floor_port = free_port()
        floor = start(FLOOR, [str(args.threads), body.decode()], floor_port)
        try:
            bare = load(floor_port, QUERY, args.clients, args.seconds)
        finally:
            floor.terminate()
            floor.wait(timeout=10)
    print(f"{args.clients} client processes, waitress {args.threads} threads, {args.seconds:.0f} s each, cpu count {os.cpu_count()}")
    print(f"| {'server':<44} | {'req/s':>7} | {'p50 ms':>7} | {'p99 ms':>7} | {'max ms':>7} | {'errors':>6} |")
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 8}|")
    for name, r in (("floor: bare WSGI, same JSON from a dict", bare), ("facade: GET /api/decision (auth, store, audit)", app)):
        print(f"| {name:<44} | {r['rps']:>7.0f} | {r['p50']:>7.2f} | {r['p99']:>7.2f} | {r['max']:>7.1f} | {r['errors']:>6.0f} |")
    share = app["rps"] / bare["rps"]
    print(f"facade throughput = {share:.0%} of the floor (target >= 60%): {'MET' if share >= 0.6 else 'NOT MET'}; "
          f"p99 {app['p99']:.2f} ms (target < 10 ms): {'MET' if app['p99'] < 10 else 'NOT MET'}")


if __name__ == "__main__":
    main()
