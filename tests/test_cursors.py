"""Sealed paging cursors: what a cursor opens to, for whom, until when, and what it never carries.

The same contract for keys in Redis and in this process; the API-level behaviour (links, 403/410,
paging forward and back) is in ``tests/api/test_search.py`` and ``tests/policy/test_az.py``.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sharing_api import redis_connection
from sharing_api.cursors import LocalCursorKeys, PagingCursors, RedisCursorKeys, sealable
from sharing_api.errors import ServiceUnavailable
from sharing_api.fhir.identifiers import FNR
from sharing_api.matching import NOBODY
from sharing_api.sessions import LocalSessions, RedisSessions
from tests.conftest import REDIS_URL

TTL = 60
TENANT = "921234562"
PATIENT = (FNR, "13097248022")
REQUESTER = "https://dho.example.test|hospital|974589095|1234567"
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def page(anchor: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "requester": REQUESTER,
        "params": [
            ["patient.identifier", f"{PATIENT[0]}|{PATIENT[1]}"],
            ["code", "http://loinc.org|8867-4"],
            ["date", "ge2026-11-03"],
            *extra.get("more", []),
        ],
        "anchor": anchor,
    }


@pytest.fixture(params=["local", "redis"])
def cursors(request: pytest.FixtureRequest) -> Iterator[PagingCursors]:
    clock = Clock()
    if request.param == "local":
        yield PagingCursors(LocalCursorKeys(), LocalSessions(TTL), TTL, clock=clock)
        return
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"dho:test-cursors:{uuid.uuid4().hex}:"  # this test's own keys (parallel workers)
    keys = RedisCursorKeys(client, TTL, prefix=prefix + "key:")
    yield PagingCursors(keys, RedisSessions(client, TTL, prefix=prefix + "search:"), TTL, clock=clock)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def open_(cursors: PagingCursors, cursor: str, **bound: Any) -> dict[str, Any] | None:
    args = {"tenant": TENANT, "subject": PATIENT, "requester": REQUESTER, **bound}
    return cursors.open(cursor, **args)


def test_a_cursor_opens_to_the_page_it_was_made_for(cursors: PagingCursors) -> None:
    pages = [page(), page(["2026-11-05T08:00:00", str(uuid.uuid4()), False])]
    made = cursors.make(pages, tenant=TENANT, subject=PATIENT)
    assert len(set(made)) == 2
    for cursor, expected in zip(made, pages, strict=True):
        assert open_(cursors, cursor) == {"tenant": TENANT, **expected}


def test_the_patient_is_in_no_cursor_not_even_encrypted(cursors: PagingCursors) -> None:
    [cursor] = cursors.make([page()], tenant=TENANT, subject=PATIENT)
    assert PATIENT[1] not in cursor
    # Decrypted with the key itself, the page holds no trace of the patient's identifier.
    data = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    key = cursors.keys.key(int.from_bytes(data[1:5], "big"), make=False)
    assert key is not None
    aad = b"dho-share paging cursor\x00" + data[:5] + f'["{TENANT}","{PATIENT[0]}","{PATIENT[1]}"]'.encode()
    plain = AESGCM(key).decrypt(data[5:17], data[17:], aad)
    assert PATIENT[1].encode() not in plain
    assert b"patient.identifier" in plain  # the parameter is there, naming "the patient" only
    assert REQUESTER.encode() not in plain  # and the requester by a digest


def test_a_cursor_of_another_tenant_or_patient_or_edited_is_unknown(cursors: PagingCursors) -> None:
    [cursor] = cursors.make([page()], tenant=TENANT, subject=PATIENT)
    assert open_(cursors, cursor, tenant="987654321") is None
    assert open_(cursors, cursor, subject=(FNR, "01010112345")) is None
    assert open_(cursors, cursor, subject=("urn:oid:2.16.578.1.12.4.1.4.2", PATIENT[1])) is None
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for at in range(len(cursor)):
        other = alphabet[(alphabet.index(cursor[at]) + 1) % 64]
        assert open_(cursors, cursor[:at] + other + cursor[at + 1 :]) is None, at
    assert open_(cursors, cursor[:-4]) is None
    assert open_(cursors, cursor + "A") is None
    assert open_(cursors, "not a cursor at all, and longer than a session's random cursor is") is None


def test_a_cursor_expires(cursors: PagingCursors) -> None:
    [cursor] = cursors.make([page()], tenant=TENANT, subject=PATIENT)
    clock = cursors.clock
    assert isinstance(clock, Clock)
    clock.now = NOW + TTL - 1
    assert open_(cursors, cursor) is not None
    clock.now = NOW + TTL
    assert open_(cursors, cursor) is None
    clock.now = NOW + 10 * TTL
    assert open_(cursors, cursor) is None


def test_another_requesters_cursor_says_so(cursors: PagingCursors) -> None:
    [cursor] = cursors.make([page()], tenant=TENANT, subject=PATIENT)
    opened = open_(cursors, cursor, requester=REQUESTER + "9")
    assert opened is not None
    assert opened["requester"] != REQUESTER + "9"  # the searcher answers 403


def test_cursors_are_padded_so_their_length_says_nothing(cursors: PagingCursors) -> None:
    first, later = cursors.make(
        [page(), page(["2026-11-05T08:00:00", str(uuid.uuid4()), True])], tenant=TENANT, subject=PATIENT
    )
    assert len(first) == len(later)


def test_a_page_too_long_to_seal_is_kept_in_the_session_store(cursors: PagingCursors) -> None:
    codes = ",".join(f"http://loinc.org|{n}-0" for n in range(100))
    big = page(more=[["code", codes], ["status", "final"]])
    small, kept = cursors.make([page(), big], tenant=TENANT, subject=PATIENT)
    assert len(small) <= cursors.max_sealed
    assert len(kept) == 22  # a session's random cursor
    assert open_(cursors, kept) == {"tenant": TENANT, **big}
    assert open_(cursors, kept, tenant="987654321") is None


def test_only_the_subject_is_left_out_of_a_sealed_page() -> None:
    params = [["patient.identifier", f"{FNR}|{PATIENT[1]}"], ["subject:identifier", PATIENT[1]]]
    assert sealable(params, PATIENT) == [["patient.identifier", 1], ["subject:identifier", 0]]
    assert sealable([["patient.identifier", f"{NOBODY}|none"]], PATIENT) == [
        ["patient.identifier", f"{NOBODY}|none"]
    ]
    # A parameter naming anyone else is never sealed: that page goes to the session store.
    assert sealable([["patient.identifier", f"{FNR}|01010112345"]], PATIENT) is None
    assert sealable([["patient.identifier", f"{FNR}|{PATIENT[1]},{FNR}|01010112345"]], PATIENT) is None


def test_two_processes_on_one_redis_open_each_others_cursors() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"dho:test-cursors:{uuid.uuid4().hex}:"
    try:
        workers = [
            PagingCursors(RedisCursorKeys(client, TTL, prefix=prefix), LocalSessions(TTL), TTL)
            for _ in range(2)
        ]
        [cursor] = workers[0].make([page()], tenant=TENANT, subject=PATIENT)
        assert open_(workers[1], cursor) == {"tenant": TENANT, **page()}
        # The key lives only until every cursor sealed under it has expired.
        [key] = list(client.scan_iter(f"{prefix}*"))
        assert 0 < int(client.ttl(key)) <= 2 * TTL + 1  # type: ignore[arg-type]
    finally:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


def test_a_lost_key_is_replaced_everywhere_after_the_recheck() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"dho:test-cursors:{uuid.uuid4().hex}:"
    ticks = [0.0]
    try:
        workers = [
            PagingCursors(
                RedisCursorKeys(client, TTL, prefix=prefix, monotonic=lambda: ticks[0]),
                LocalSessions(TTL),
                TTL,
            )
            for _ in range(2)
        ]
        workers[0].make([page()], tenant=TENANT, subject=PATIENT)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)  # Redis lost it (a flush, a failover)
        [fresh] = workers[1].make([page()], tenant=TENANT, subject=PATIENT)  # makes a new key
        ticks[0] = RedisCursorKeys.RECHECK
        [again] = workers[0].make([page()], tenant=TENANT, subject=PATIENT)
        assert open_(workers[1], again) is not None
        assert open_(workers[0], fresh) is not None
    finally:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


def test_a_forged_cursor_of_the_next_period_leaves_the_keys_in_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Opening a cursor looks its key up before the tag is checked; a cursor claiming the next period
    (anyone can write one) must not make the worker forget the keys it holds, each forgotten key
    costing every later request a Redis round trip."""
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"dho:test-cursors:{uuid.uuid4().hex}:"
    clock = Clock()
    try:
        keys = RedisCursorKeys(client, TTL, prefix=prefix, monotonic=lambda: 0.0)
        worker = PagingCursors(keys, LocalSessions(TTL), TTL, clock=clock)
        clock.now = NOW + TTL - 10  # late in a key period
        [earlier] = worker.make([page()], tenant=TENANT, subject=PATIENT)
        clock.now = NOW + TTL + 10  # the next period: the earlier cursor is valid for 40 s more
        worker.make([page()], tenant=TENANT, subject=PATIENT)
        period = int(clock.now) // TTL
        header = bytes((1,)) + (period + 1).to_bytes(4, "big")
        forged = base64.urlsafe_b64encode(header + bytes(12 + 16 + 256)).rstrip(b"=").decode()
        assert open_(worker, forged) is None

        calls: list[str] = []
        monkeypatch.setattr(client, "execute_command", lambda *a, **k: calls.append(str(a[0])))
        assert open_(worker, earlier) is not None  # its key is still in memory ...
        assert calls == []  # ... so no Redis call was needed
    finally:
        monkeypatch.undo()
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


def test_redis_down_is_a_clear_503() -> None:
    dead = redis_connection.connect("redis://127.0.0.1:1/0")
    cursors = PagingCursors(RedisCursorKeys(dead, TTL), RedisSessions(dead, TTL), TTL)
    with pytest.raises(ServiceUnavailable):
        cursors.make([page()], tenant=TENANT, subject=PATIENT)
