"""Decision endpoint under load on 127.0.0.1, beside a bare WSGI floor under the same server.

Two servers, started as subprocesses and both served as ``fhir-adapter serve`` serves the facade (waitress
through ``serving.create_server``: the same thread count, limits and thread switch interval):
  * the facade (create_app on a SQLite store holding the example forms), asked GET /api/decision
    through its request pipeline (request id, bearer token, parameters checked, patient's versions
    revalidated against the change marker, verdict, audit row committed, answer rendered, access log);
  * the floor: a bare WSGI app answering the facade's response from a dict (no routing, no auth, no
    store) -- the same body and the same headers, security headers and request id included, because the
    load generator shares the machine's two cores and parsing ten headers instead of two costs it (and so
    every server measured) about a tenth of its throughput.
The load generator runs in separate processes, each with persistent HTTP/1.1 connections, for a fixed
time, and records every request's latency.  The servers take turns for ``--rounds`` rounds, so a noisy
neighbour on the machine hits all of them alike; the table gives each server's median round (by rate).
Targets: the facade's p99 under 10 ms (over every request of every round) and its median round
at least 60% of the floor's median round, in requests per second.

With ``--patients N [N ...]`` (a size sweep) each size gets its own store, filled through the store's bulk
load (``Store.bulk_load``, not HTTP): N synthetic young people, each with a three-version history of the
mapping benchmark's six-person form.  Each size is then asked, round by round with the others:
  * decisions, working set: three questions about each of the same number of young people at every size
    (the smallest size's count, at most 500), drawn evenly from the whole store, plus one in ten about
    unknown patients -- so only the store's size changes between sizes, and the first size is the baseline;
  * decisions, cold (sizes above 2,000 young people): questions about 3,000 young people, more than the
    patient cache holds, so every question reads the patient's versions from the database;
  * the per-patient endpoints for the working set: GET /api/patients/{nhs}/summary, GET
    /api/forms/{id}/history and GET /fhir/Consent?patient:identifier=...|{nhs}.
Target: decisions on the working set at the largest size within 1.2x of the smallest in req/s and p99.
``--postgres`` adds every size on a real PostgreSQL server (tests/support/postgres.py's throw-away cluster).

Run:  python benchmarks/bench_decision.py [--seconds 10] [--rounds 3] [--clients 2] [--threads 2] [--patients 0] [--switch-interval 100]
      python benchmarks/bench_decision.py --patients 500 10000 100000 [--postgres] [--seconds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import math
import multiprocessing
import os
import random
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the process helpers live in the test support package

from fhir_adapter.serving import ServingLimits  # noqa: E402
from tests.support.processes import stop_process  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
QUERY = "/api/decision?" + urlencode({"patient": "9434765919", "recipient-role": "mother", "information-type": "attendance", "purpose": "TREAT"})

#: Both servers are served as ``fhir-adapter serve`` serves the facade: waitress through ``serving.create_server``,
#: with the same limits and the same thread switch interval (the last argument, in microseconds).
SERVE = """
    from fhir_adapter.serving import ServingLimits, create_server
    limits = ServingLimits(threads=threads, switch_interval_microseconds=int(sys.argv[-1]))
    create_server(app, "127.0.0.1", port, limits, ident="bench").run()
"""

FACADE = textwrap.dedent("""
    import sys
    from fhir_adapter.access import TokenGrant
    from fhir_adapter.config import Settings, hash_token
    from fhir_adapter.server import create_app
    port, threads, url, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    grant = TokenGrant("bench", hash_token(token), frozenset({"decision.read", "consent.read"}))
    app = create_app(Settings(database_url=url, grants=(grant,)))
""") + textwrap.dedent(SERVE)

FLOOR = textwrap.dedent("""
    import json, sys
    port, threads, answers_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    ANSWERS = {path: (body.encode(), [tuple(h) for h in headers])
               for path, (body, headers) in json.loads(open(answers_file).read()).items()}
    def app(environ, start_response):
        payload, fixed = ANSWERS[environ["PATH_INFO"] + "?" + environ["QUERY_STRING"]]
        start_response("200 OK", [*fixed, ("Content-Length", str(len(payload)))])
        return [payload]
""") + textwrap.dedent(SERVE)
#: Young people asked about in the cold workload: more than the patient cache holds (2,000), so none is cached.
COLD_PATIENTS = 3000
#: Young people in the working set at most (the smallest size's count, if smaller).
WORKING_SET = 500
#: Added by waitress itself to every response, the floor's included.
SERVER_HEADERS = {"content-length", "date", "server", "connection"}


def bench_form(n: int) -> Any:
    """Young person n: the mapping benchmark's six-person form with its own id and NHS number."""
    from bench_mapping import realistic_form

    form = realistic_form(n)
    young = dataclasses.replace(form.young_person, nhs_number=nhs_number_for(n))
    return dataclasses.replace(form, form_id=bench_form_id(n), young_person=young)


def bench_history(n: int) -> list[Any]:
    """Young person n's three versions: two earlier choices (other forms' people), then bench_form(n)."""
    from bench_mapping import realistic_form

    latest = bench_form(n)
    earlier = [dataclasses.replace(realistic_form(n + shift), form_id=latest.form_id, young_person=latest.young_person) for shift in (7, 13)]
    return [*earlier, latest]


def build_store(url: str, patients: int) -> float:
    """Fill an empty store with the example forms and ``patients`` young people (bulk load); seconds taken."""
    from fhir_adapter.form import PROFILES_DIR, parse_form
    from fhir_adapter.store import Store

    started = time.perf_counter()
    with Store.open(url) as store:
        for path in sorted((PROFILES_DIR / "examples").glob("form-*.json")):
            store.create_form(parse_form(json.loads(path.read_text())), actor="bench")
        store.bulk_load((bench_history(n) for n in range(patients)), actor="bench")
    return time.perf_counter() - started


def nhs_number_for(n: int) -> str:
    rng = random.Random(n)
    while True:  # about one draw in eleven has no check digit
        first = "".join(rng.choice("0123456789") for _ in range(9))
        total = sum(int(d) * w for d, w in zip(first, range(10, 1, -1), strict=True))
        digit = 11 - total % 11
        if digit != 10:
            return first + str(0 if digit == 11 else digit)


def questions(patients: int) -> list[str]:
    """Questions about every one of ``patients`` young people (fixed order, so every run asks the same)."""
    return questions_about(range(patients)) if patients else [QUERY]


def questions_about(people: Sequence[int]) -> list[str]:
    """Three questions about each young person (the roles and types of people 0-2 on their form, see
    realistic_form) and, for every tenth, one about an unknown patient; shuffled with a fixed seed."""
    from bench_mapping import ROLES, TYPES

    paths = []
    for n in people:
        for i in range(3):
            paths.append(
                "/api/decision?"
                + urlencode(
                    {
                        "patient": nhs_number_for(n),
                        "recipient-role": ROLES[(n + i) % len(ROLES)],
                        "information-type": TYPES[(n + i) % len(TYPES)],
                        "purpose": "TREAT",
                    }
                )
            )
        if n % 10 == 0:
            paths.append(
                "/api/decision?"
                + urlencode({"patient": nhs_number_for(10**7 + n), "recipient-role": "mother", "information-type": "attendance", "purpose": "TREAT"})
            )
    random.Random(0).shuffle(paths)
    return paths


def spread(size: int, count: int) -> list[int]:
    """``count`` young people drawn evenly from a store of ``size``."""
    count = min(count, size)
    return [i * size // count for i in range(count)]


def workloads(size: int, working_set: int) -> dict[str, list[str]]:
    """What each workload asks of a store holding ``size`` young people (see the module doc)."""
    from fhir_adapter.mappings import codes

    if size == 0:
        return {"decisions": [QUERY]}
    people = spread(size, working_set)
    asked = {"decisions, working set": questions_about(people)}
    if size > COLD_PATIENTS * 2 // 3:
        asked["decisions, cold"] = questions_about(spread(size, COLD_PATIENTS))
    asked["summary"] = [f"/api/patients/{nhs_number_for(n)}/summary" for n in people]
    asked["history"] = [f"/api/forms/{bench_form_id(n)}/history" for n in people]
    asked["FHIR search by patient"] = [
        "/fhir/Consent?" + urlencode({"patient:identifier": f"{codes.NHS_NUMBER}|{nhs_number_for(n)}"}) for n in people
    ]
    return asked


def bench_form_id(n: int) -> str:
    return str(uuid.UUID(int=10**6 + n, version=4))


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
    stop_process(process)
    raise SystemExit("server did not start")


def one_response(conn: http.client.HTTPConnection, path: str) -> tuple[bytes, list[tuple[str, str]]]:
    conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}")
    return body, response.getheaders()


class LeanClient:
    """One persistent HTTP/1.1 connection, as lean as a client can be in Python: prebuilt request bytes out, the
    status line checked and the body read by its Content-Length.

    The load generator shares the machine's cores with the servers it measures, so every microsecond it
    spends parsing is taken from them; http.client (headers parsed into a message object) costs several
    times what this does, and caps what a second worker process can show (bench_workers.py).  Responses
    here are never chunked: every route answers with a Content-Length.
    """

    def __init__(self, port: int) -> None:
        self._port = port
        self._sock = self._connect()
        self._buffer = b""
        self._requests: dict[str, bytes] = {}

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self._port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def get(self, path: str) -> None:
        """Raises RuntimeError for any status but 200, OSError for a dropped connection."""
        self._sock.sendall(self._request(path))
        buffer = self._buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            buffer += self._receive()
        length = _CONTENT_LENGTH.search(buffer, 0, end + 2)
        if length is None:
            raise RuntimeError("a response without Content-Length")
        stop = end + 4 + int(length.group(1))
        while len(buffer) < stop:
            buffer += self._receive()
        self._buffer = buffer[stop:]
        if buffer[9:12] != b"200":
            raise RuntimeError(f"HTTP {buffer[9:12].decode(errors='replace')}")

    def _request(self, path: str) -> bytes:
        found = self._requests.get(path)
        if found is None:
            found = self._requests[path] = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self._port}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        return found

    def _receive(self) -> bytes:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self._sock.close()


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class StdlibClient:
    """The same over http.client: every response's headers parsed into a message object, as most clients do."""

    def __init__(self, port: int) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, path: str) -> None:
        one_response(self._conn, path)

    def close(self) -> None:
        self._conn.close()


#: The load generators: ``http.client`` as an EHR's client library would be, or the lean one (less of the
#: machine's CPU per request, left to the servers).
CLIENTS: dict[str, type[LeanClient] | type[StdlibClient]] = {"http.client": StdlibClient, "lean": LeanClient}


def client_worker(port: int, paths: list[str], offset: int, seconds: float, queue: multiprocessing.Queue, kind: str = "http.client") -> None:
    client = CLIENTS[kind](port)
    latencies, errors, i = [], 0, offset
    warm_up = 20
    deadline = time.perf_counter() + seconds
    while warm_up or time.perf_counter() < deadline:
        path = paths[i % len(paths)]
        i += 1
        started = time.perf_counter()
        try:
            client.get(path)
            if not warm_up:
                latencies.append(time.perf_counter() - started)
        except (RuntimeError, OSError, http.client.HTTPException):
            errors += 1
            client.close()
            client = CLIENTS[kind](port)
        if warm_up:
            warm_up -= 1
            deadline = time.perf_counter() + seconds  # the round starts when the warm-up ends
    queue.put((latencies, errors))


def load(port: int, paths: list[str], clients: int, seconds: float, kind: str = "http.client") -> dict[str, Any]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=client_worker, args=(port, paths, c * len(paths) // clients, seconds, queue, kind)) for c in range(clients)
    ]
    for w in workers:
        w.start()
    results = [queue.get(timeout=seconds + 60) for _ in workers]
    for w in workers:
        w.join(timeout=10)
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = sum(e for _, e in results)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [math.nan] * 99  # a round of errors only
    return {
        "rps": len(latencies) / seconds,
        "p50": q[49] * 1000,
        "p99": q[98] * 1000,
        "max": latencies[-1] * 1000 if latencies else math.nan,
        "requests": len(latencies),
        "errors": errors,
        "latencies": latencies,
    }


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_table() -> dict[int, tuple[int, float]]:
    """Every process: pid -> (parent pid, CPU seconds used so far), from /proc (Linux); empty elsewhere."""
    table: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat") if Path("/proc/self/stat").exists() else ():
        try:
            fields = entry.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        table[int(entry.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS)
    return table


def tree_cpu(root: int, table: dict[int, tuple[int, float]]) -> float:
    """CPU seconds of ``root`` and every process under it (the serve parent and its workers; the postmaster and its backends)."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += table.get(pid, (0, 0.0))[1]
        todo += children.get(pid, [])
    return total


def measured_round(port: int, paths: list[str], args: argparse.Namespace, server: int, database: int | None = None) -> dict[str, Any]:
    """One round of load, with the CPU the server, the database server and the clients used per request (Linux).

    ``server`` and ``database`` are process ids; each counts with every process under it.
    """
    before, clients_before = _process_table(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = load(port, paths, args.clients, args.seconds, args.client)
    after, clients_after = _process_table(), resource.getrusage(resource.RUSAGE_CHILDREN)
    requests = max(result["requests"], 1)
    used = {
        "server": tree_cpu(server, after) - tree_cpu(server, before),
        "database": tree_cpu(database, after) - tree_cpu(database, before) if database else 0.0,
        # the load generator's processes, reaped by load(): their CPU has just been added to this process's children
        "clients": (clients_after.ru_utime + clients_after.ru_stime) - (clients_before.ru_utime + clients_before.ru_stime),
    }
    return {**result, "cpu_us": {part: seconds / requests * 1e6 for part, seconds in used.items()} if before else None}


def postmaster_pid(cluster: Any) -> int | None:
    try:
        return int((cluster.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def pooled_p99(rounds: list[dict[str, Any]]) -> float:
    """The 99th percentile of every request of every round, in ms: the run's p99."""
    return statistics.quantiles([x for r in rounds for x in r["latencies"]], n=100)[98] * 1000


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(rounds, key=lambda r: r["rps"])[len(rounds) // 2]


@dataclass
class Facade:
    """One facade server on one filled store."""

    backend: str
    size: int
    url: str
    load_seconds: float
    asked: dict[str, list[str]]
    processes: list[subprocess.Popen] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)  # workload -> the server asked
    server_for: dict[str, subprocess.Popen] = field(default_factory=dict)  # workload -> that server's process
    rounds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def postgres_cluster() -> Any:
    """The test suite's throw-away PostgreSQL cluster (fsync and synchronous_commit off: the data is disposable)."""
    from tests.support.postgres import LocalCluster, _server_account, find_server_bin

    bin_dir = find_server_bin()
    if bin_dir is None:
        raise SystemExit("--postgres: no PostgreSQL server binaries found (scripts/bootstrap.sh --with-postgres installs them)")
    cluster = LocalCluster(bin_dir, _server_account())
    cluster.init()
    cluster.start()
    return cluster


def new_database(backend: str, name: str, tmp: str, cluster: Any) -> str:
    if backend == "sqlite":
        return f"sqlite:///{os.path.join(tmp, name + '.db')}"
    from tests.support.postgres import _execute_autocommit

    _execute_autocommit(cluster.url("postgres"), f"CREATE DATABASE {name}")
    return cluster.url(name)


def fetch_answers(facade: Facade, answers: dict[str, tuple[str, list[tuple[str, str]]]]) -> None:
    """Every decision question once, for the floor's dict: the facade's very bytes (same body, same headers,
    its request id included), so the load generator, which shares the two cores, parses the same response."""
    for name, paths in facade.asked.items():
        if name.startswith("decisions"):
            conn = http.client.HTTPConnection("127.0.0.1", facade.ports[name], timeout=10)
            for path in paths:
                body, headers = one_response(conn, path)
                answers[path] = body.decode(), [(k, v) for k, v in headers if k.lower() not in SERVER_HEADERS]
            conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="length of one round of load")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server, taken in turns")
    # Default: one client process per core -- enough to saturate the server (one GIL-bound process at a full
    # core) without the load generator itself oversubscribing the machine; --clients 4 --threads 4 shows that case.
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes (one connection each)")
    parser.add_argument("--threads", type=int, default=2, help="waitress threads in every server")
    parser.add_argument(
        "--patients",
        type=int,
        nargs="+",
        default=[0],
        help="store sizes in young people (0: the examples only, one question repeated); the first is the baseline",
    )
    parser.add_argument("--postgres", action="store_true", help="every size on PostgreSQL too, beside SQLite")
    parser.add_argument(
        "--switch-interval",
        type=int,
        default=ServingLimits.switch_interval_microseconds,
        help="every server's thread switch interval in µs (CASUS_SWITCH_INTERVAL_MICROSECONDS; 5000 is CPython's default)",
    )
    parser.add_argument("--client", choices=sorted(CLIENTS), default="http.client", help="the load generator's HTTP client (see CLIENTS)")
    args = parser.parse_args()
    sizes = sorted(set(args.patients))
    working_set = min(WORKING_SET, min(sizes)) if min(sizes) else WORKING_SET
    backends = ["sqlite", "postgresql"] if args.postgres else ["sqlite"]
    facades: list[Facade] = []
    floor: subprocess.Popen | None = None
    cluster = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cluster = postgres_cluster() if args.postgres else None
            for backend in backends:
                for size in sizes:
                    url = new_database(backend, f"bench_{size}", tmp, cluster)
                    facade = Facade(backend, size, url, build_store(url, size), workloads(size, working_set))
                    print(f"{backend}: {size} young people loaded in {facade.load_seconds:.1f} s", file=sys.stderr, flush=True)
                    # The cold workload gets a server of its own on the same store, so it does not empty the
                    # patient cache the working set's server has built (an EHR's day does not alternate the two).
                    for name in facade.asked:
                        if name == "decisions, cold" or not facade.processes:
                            port = free_port()
                            facade.processes.append(start(FACADE, [str(args.threads), url, TOKEN, str(args.switch_interval)], port, tmp))
                            facade.ports[name] = port
                            facade.server_for[name] = facade.processes[-1]
                        else:
                            facade.ports[name] = facade.ports["decisions, working set"]
                            facade.server_for[name] = facade.server_for["decisions, working set"]
                    facades.append(facade)
            answers: dict[str, tuple[str, list[tuple[str, str]]]] = {}
            for facade in facades:
                fetch_answers(facade, answers)
            first = facades[0]
            floor_paths = next(paths for name, paths in first.asked.items() if name.startswith("decisions"))
            assert json.loads(answers[floor_paths[0]][0])["decision"] in ("permit", "deny")
            answers_file = Path(tmp) / "floor.json"
            answers_file.write_text(json.dumps(answers))
            floor_port = free_port()
            floor = start(FLOOR, [str(args.threads), str(answers_file), str(args.switch_interval)], floor_port, tmp)
            floor_rounds: list[dict[str, Any]] = []
            for _ in range(args.rounds):
                floor_rounds.append(measured_round(floor_port, floor_paths, args, floor.pid))
                for facade in facades:
                    for name, paths in facade.asked.items():
                        server, database = facade.server_for[name].pid, postmaster_pid(cluster) if facade.backend == "postgresql" else None
                        facade.rounds.setdefault(name, []).append(measured_round(facade.ports[name], paths, args, server, database))
        finally:
            for facade in facades:
                for process in facade.processes:
                    stop_process(process)
            stop_process(floor)
            if cluster is not None:
                cluster.stop()
    report(args, facades, floor_rounds, floor_paths, working_set)


def report(args: argparse.Namespace, facades: list[Facade], floor_rounds: list[dict[str, Any]], floor_paths: list[str], working_set: int) -> None:
    bare = median_round(floor_rounds)
    asked = f"working set: {working_set} young people per size" if facades[0].size else "the examples only, one question repeated"
    print(
        f"{args.clients} client processes ({args.client}), waitress {args.threads} threads, switch interval {args.switch_interval} µs, "
        f"{args.rounds} rounds of {args.seconds:g} s per "
        f"workload in turns (median round shown; p99 over every request of every round), cpu count {os.cpu_count()}, {asked}"
    )
    print(
        f"| {'database':<10} | {'young people':>12} | {'load s':>6} | {'workload':<44} | {'req/s':>6} | {'vs floor':>8} | "
        f"{'vs first':>8} | {'p50 ms':>6} | {'p99 ms':>6} | {'max ms':>7} | {'errors':>6} | {'server CPU µs/req':>17} | {'database':>8} |"
    )
    print(
        f"|{'-' * 12}|{'-' * 14}|{'-' * 8}|{'-' * 46}|{'-' * 8}|{'-' * 10}|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 9}|{'-' * 8}|{'-' * 19}|{'-' * 10}|"
    )
    print(
        f"| {'-':<10} | {'-':>12} | {'-':>6} | {'floor: bare WSGI, same response from a dict':<44} | {bare['rps']:>6.0f} | {'100%':>8} | "
        f"{'-':>8} | {bare['p50']:>6.2f} | {pooled_p99(floor_rounds):>6.2f} | {bare['max']:>7.1f} | {bare['errors']:>6.0f} | {_cpu(floor_rounds)} |"
    )
    baselines: dict[tuple[str, str], tuple[float, float]] = {}
    for facade in facades:
        for name, rounds in facade.rounds.items():
            r, p99 = median_round(rounds), pooled_p99(rounds)
            baselines.setdefault((facade.backend, name), (r["rps"], p99))
            base_rps = baselines[(facade.backend, name)][0]
            share = f"{r['rps'] / bare['rps']:.0%}" if name.startswith("decisions") else "-"
            label = "GET /api/decision" if name == "decisions" else name
            print(
                f"| {facade.backend:<10} | {facade.size:>12,} | {facade.load_seconds:>6.1f} | {label:<44} | {r['rps']:>6.0f} | {share:>8} | "
                f"{r['rps'] / base_rps:>8.2f} | {r['p50']:>6.2f} | {p99:>6.2f} | {r['max']:>7.1f} | {r['errors']:>6.0f} | {_cpu(rounds)} |"
            )
    first = facades[0].rounds[next(iter(facades[0].rounds))]
    share, p99 = median_round(first)["rps"] / bare["rps"], pooled_p99(first)
    print(
        f"{facades[0].backend} decisions at {facades[0].size:,}: {share:.0%} of the floor's req/s (target >= 60%), p99 {p99:.2f} ms "
        f"(target < 10 ms): {'MET' if share >= 0.6 and p99 < 10 else 'NOT MET'}"
    )
    verdicts(facades, baselines)


def _cpu(rounds: list[dict[str, Any]]) -> str:
    """The server's and the database server's CPU per request, median over the rounds (Linux; "-" elsewhere)."""
    measured = [r["cpu_us"] for r in rounds if r.get("cpu_us")]
    if not measured:
        return f"{'-':>17} | {'-':>8}"
    server, database = statistics.median(m["server"] for m in measured), statistics.median(m["database"] for m in measured)
    return f"{server:>17.0f} | {database:>8.0f}"


def verdicts(facades: list[Facade], baselines: dict[tuple[str, str], tuple[float, float]]) -> None:
    """The targets: the largest size within 1.2x of the first, per backend; PostgreSQL beside SQLite."""
    largest = {f.backend: f for f in facades}
    for backend, facade in largest.items():
        for name, rounds in facade.rounds.items():
            base_rps, base_p99 = baselines[(backend, name)]
            rps, p99 = median_round(rounds)["rps"], pooled_p99(rounds)
            slower, later = base_rps / rps, p99 / base_p99
            if facade is facades[0] or name == "decisions, cold":
                continue
            met = slower <= 1.2 and later <= 1.2
            print(
                f"{backend} {name} at {facade.size:,} young people vs the first size: req/s {rps:.0f} vs {base_rps:.0f} "
                f"({slower:.2f}x slower), p99 {p99:.2f} vs {base_p99:.2f} ms ({later:.2f}x) (target within 1.2x): "
                f"{'MET' if met else 'NOT MET'}"
            )
    if "postgresql" in largest:
        for sqlite_facade, pg_facade in zip(
            [f for f in facades if f.backend == "sqlite"], [f for f in facades if f.backend == "postgresql"], strict=True
        ):
            name = "decisions, working set" if sqlite_facade.size else "decisions"
            lite, pg = median_round(sqlite_facade.rounds[name]), median_round(pg_facade.rounds[name])
            share, p99 = pg["rps"] / lite["rps"], pooled_p99(pg_facade.rounds[name])
            print(
                f"postgresql decisions at {pg_facade.size:,}: {share:.0%} of SQLite's req/s (target >= 50%), p99 {p99:.2f} ms "
                f"(target < 15 ms): {'MET' if share >= 0.5 and p99 < 15 else 'NOT MET'}"
            )


if __name__ == "__main__":
    main()
