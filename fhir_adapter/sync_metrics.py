"""Sync metrics in the Prometheus text format, read from the store at each scrape.

The sync job runs as a separate, short-lived process (a timer), so there is no long-lived process to hold
counters; every run is recorded in the store instead (``sync_runs``, ``sync_problems``) and these metrics are
computed from it when scraped.  Counters are therefore true totals since the store was created, whichever
process ran the sync.  Labels are the server's base URL and an outcome; nothing about a form or a person.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .store import Store
from .store.sync_state import ProblemKind
from .sync import OUTCOMES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROBLEM_KINDS: tuple[ProblemKind, ...] = ("conflict", "rejected")


class SyncCollector(Collector):
    """Turns what the store recorded about sync runs into metric families."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        state = self._store.sync_state
        totals = state.run_totals()
        servers = sorted({t.server for t in totals} | set(state.servers()))
        runs = CounterMetricFamily("casus_sync_runs", "Sync runs recorded, by server and outcome.", labels=["server", "outcome"])
        pushed = CounterMetricFamily("casus_sync_forms_pushed", "Forms whose content reached the server.", labels=["server"])
        pulled = CounterMetricFamily("casus_sync_forms_pulled", "Server changes stored as new local versions.", labels=["server"])
        duration = CounterMetricFamily("casus_sync_run_duration_seconds", "Time spent in sync runs.", labels=["server"])
        for server in servers:
            mine = [t for t in totals if t.server == server]
            for outcome in OUTCOMES.values():
                runs.add_metric([server, outcome], sum(t.runs for t in mine if t.outcome == outcome))
            pushed.add_metric([server], sum(t.pushed for t in mine))
            pulled.add_metric([server], sum(t.pulled for t in mine))
            duration.add_metric([server], sum(t.duration_seconds for t in mine))
        yield from (runs, pushed, pulled, duration)
        yield from self._gauges(servers)

    def _gauges(self, servers: Iterable[str]) -> Iterator[Metric]:
        state = self._store.sync_state
        problems = state.problem_counts()
        outstanding = GaugeMetricFamily(
            "casus_sync_problems_outstanding", "Conflicts and rejections waiting to be solved.", labels=["server", "kind"]
        )
        last_success = GaugeMetricFamily(
            "casus_sync_last_success_timestamp_seconds", "When the last run that ended in step finished (Unix time).", labels=["server"]
        )
        last_duration = GaugeMetricFamily(
            "casus_sync_last_run_duration_seconds", "How long the last run that was not skipped took.", labels=["server"]
        )
        waiting = GaugeMetricFamily("casus_sync_forms_waiting", "Forms with a change the server has not received.", labels=["server"])
        for server in servers:
            for kind in PROBLEM_KINDS:
                outstanding.add_metric([server, kind], problems.get((server, kind), 0))
            success, last = state.last_run(server, outcome="in-step"), state.last_run(server, not_outcome="skipped")
            if success is not None:
                last_success.add_metric([server], success.ended_at.timestamp())
            if last is not None:
                last_duration.add_metric([server], last.duration_seconds)
            waiting.add_metric([server], state.forms_waiting(server))
        yield from (outstanding, last_success, last_duration, waiting)


def metrics_text(store: Store) -> bytes:
    """The exposition text for one scrape (a registry per call: nothing global, nothing shared between apps)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SyncCollector(store))
    return generate_latest(registry)
