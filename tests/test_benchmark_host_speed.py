"""The benchmark's host-speed probe: every phase says how fast the host ran the cores, and a run whose
phases ran at different speeds says so (BENCHMARKS.md: the read's two modes were the host's speed)."""

from __future__ import annotations

from benchmarks import report
from benchmarks.cpu import SpeedProbe, reference_loop
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
