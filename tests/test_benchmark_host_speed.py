"""The benchmark's diagnostics: every phase says how fast the host ran Python code, and a run whose phases
ran at different speeds says so; ``--diagnose`` counts what each request did (BENCHMARKS.md: the read's
two levels were the same work at two costs)."""

from __future__ import annotations

from benchmarks import diagnose, report
from benchmarks.cpu import CpuProbe, Sample, SpeedProbe, reference_loop
from benchmarks.load import LoadResult

PHASES = ("ingest", "baseline", "search", "read", "token")


def _phase(reference_ms: float | None) -> LoadResult:
    return LoadResult(
        clients=1, latencies_ns=[1_000_000], errors=0, items=0, seconds=1.0, cpu={}, reference_ms=reference_ms
    )


def _results(**speeds: float | None) -> report.Results:
    phase = {name: _phase(speeds.get(name, 2.1)) for name in PHASES}
    return report.Results(
        phase["ingest"], 1, 1, 1, phase["baseline"], phase["search"], phase["read"], phase["token"]
    )


def test_the_reference_loop_reports_the_cpu_time_it_took() -> None:
    assert reference_loop(1000) > 0


def test_a_window_gets_a_figure_however_short() -> None:
    probe = SpeedProbe(every=60)
    probe.start()
    assert probe.stop() is not None


def test_a_probe_never_started_has_no_figure() -> None:
    assert SpeedProbe().stop() is None


def test_each_phase_s_host_speed_is_printed() -> None:
    line = report.host_speed(_results(read=3.9))
    assert "search 2.1" in line
    assert "read 3.9" in line


def test_a_phase_on_a_slower_host_is_flagged() -> None:
    warnings = report.warnings(_results(read=3.9))
    assert len(warnings) == 1
    assert "slower during read" in warnings[0]
    assert "2.1-3.9 ms" in warnings[0]


def test_phases_at_about_one_speed_are_not_flagged() -> None:
    assert report.warnings(_results(read=2.4)) == []


def test_no_figure_no_flag() -> None:
    unknown = _results(**dict.fromkeys(PHASES))
    assert report.warnings(unknown) == []
    assert report.host_speed(unknown).endswith("n/a")


def test_diagnostics_give_each_count_and_each_process_s_cpu_per_request() -> None:
    probe = CpuProbe(server_pid=10, database="dho_bench_x")
    backend = "postgres: 15/main: postgres dho_bench_x 127.0.0.1(5) idle"
    before = diagnose.Counts(
        {"xact_commit": 100, "autovacuum runs": 0},
        Sample({10: (1, "granian", 1.0, 7), 20: (1, backend, 2.0, 8)}, 0.0, 0.0),
        {("server", "11", "context switches"): 5, ("server", "13", "context switches"): 50},
    )
    after = diagnose.Counts(
        {"xact_commit": 400, "autovacuum runs": 1},
        Sample({10: (1, "granian", 1.5, 7), 20: (1, backend.replace("idle", "INSERT"), 2.2, 8)}, 0.0, 0.0),
        # thread 13 ended (not a negative count), thread 12 started (all of its switches count)
        {("server", "11", "context switches"): 205, ("server", "12", "context switches"): 100},
    )
    lines = diagnose.report("read by id", before, after, 100, probe)
    assert lines[0] == "read by id, per request (100 requests in the measured window):"
    assert any(line.split() == ["xact_commit", "3.000"] for line in lines)
    assert any(line.split() == ["autovacuum", "runs", "0.010"] for line in lines)
    assert any(line.split() == ["server", "context", "switches", "3.000"] for line in lines)
    assert any(line.split()[:2] == ["10", "granian"] and line.split()[-3] == "5.000" for line in lines)
    # a backend is one line whatever its state was when sampled
    assert [line.split()[-3] for line in lines if "dho_bench_x" in line] == ["2.000"]
