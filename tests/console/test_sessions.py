"""Console sessions kept in process (no Redis): timed-out sessions do not pile up."""

from __future__ import annotations

from sharing_api.console.sessions import ConsoleSessions


def test_sessions_left_to_time_out_are_dropped_at_later_logins() -> None:
    """An auditor who closes the tab without logging out leaves a session that only times out; a
    server that runs for months keeps the sessions of the last ``timeout`` seconds, not every one."""
    now = [0.0]
    sessions = ConsoleSessions(None, timeout=900, clock=lambda: now[0])
    started = []
    for n in range(200):  # a login every 10 minutes, none logged out
        now[0] = n * 600.0
        started.append(sessions.start(f"auditor{n}", "921234562", "Auditor"))
        assert sessions.held() <= 2  # this one and the previous, still inside its 900 s
    assert sessions.resume(started[-1].id) is not None
    assert sessions.resume(started[-3].id) is None


def test_a_live_session_survives_other_logins() -> None:
    now = [0.0]
    sessions = ConsoleSessions(None, timeout=900, clock=lambda: now[0])
    first = sessions.start("a", "921234562", "A")
    for n in range(1, 10):
        now[0] = n * 300.0
        assert sessions.resume(first.id) is not None  # used every 5 minutes: never idle for 900 s
        sessions.start(f"b{n}", "921234562", "B")
    assert sessions.resume(first.id) is not None
