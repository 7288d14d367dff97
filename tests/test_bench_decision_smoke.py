"""Smoke test of the decision benchmark's store and workloads (the benchmark itself runs outside pytest)."""

from __future__ import annotations

import sys
from pathlib import Path

from fhir_adapter.config import Settings
from fhir_adapter.server import create_app
from fhir_adapter.store import Store
from tests.support.facade import bearer, grants

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_decision


def test_the_benchmark_store_holds_three_versions_per_young_person(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    bench_decision.build_store(url, 12)
    with Store.open(url) as store:
        versions = store.versions_for_patient(bench_decision.nhs_number_for(11))
        assert [v.version for v in versions] == [1, 2, 3]
        assert len(versions[-1].form.people) == 6


def test_every_workload_question_is_answered(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    bench_decision.build_store(url, 12)
    client = create_app(Settings(database_url=url, grants=grants())).test_client()
    asked = bench_decision.workloads(12, working_set=4)
    assert set(asked) == {"decisions, working set", "summary", "history", "FHIR search by patient"}
    for paths in asked.values():
        for path in paths:
            response = client.get(path, headers=bearer("ehr"))
            assert response.status_code == 200, (path, response.get_json())


def test_both_load_generators_count_answers_and_refusals_alike(tmp_path: Path) -> None:
    """The lean client reads the same responses http.client does: 200s are answers, anything else an error."""
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    bench_decision.build_store(url, 0)
    port = bench_decision.free_port()
    server = bench_decision.start(bench_decision.FACADE, ["2", url, bench_decision.TOKEN, "200"], port, str(tmp_path))
    try:
        refused = bench_decision.QUERY.replace("purpose=TREAT", "purpose=")  # 400: the purpose is required
        for kind in bench_decision.CLIENTS:
            answered = bench_decision.load(port, [bench_decision.QUERY], 1, 0.3, kind)
            assert answered["requests"] > 0 and answered["errors"] == 0
            assert bench_decision.load(port, [refused], 1, 0.3, kind)["errors"] > 0
    finally:
        bench_decision.stop_process(server)
