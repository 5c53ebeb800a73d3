"""Paging cursors that carry their page, sealed: no server-side record written per search (issue 12).

A searchset's ``self``, ``next`` and ``previous`` links name their page with ``?_cursor=``. Writing a
session record for each (``sessions``) cost every search a Redis round trip, even a search whose one
page needs no ``next``. A *sealed* cursor holds the page itself (the applied parameters, the paging
anchor, a digest of the requester and the expiry), encrypted and authenticated with AES-GCM (NIST SP
800-38D) under the key of its key period; presenting it needs no look-up but that key.

What a cursor keeps from the session design:

* **No patient identifier, in any form.** The tenant and the patient the search is for (the one the
  requester's attestation names) are not in the cursor: they are bound to it as associated data.
  Where the parameters name that patient, the cursor says only "the patient" (``SUBJECT``) and the
  identifier is put back from the attestation of the request that presents it. A patient parameter
  naming anyone else is never sealed (``sealable``).
* **Bound and indistinguishable.** Another tenant's cursor, one presented for another patient, an
  edited or truncated one and an expired one all open to ``None`` (the route's 410). The requester
  (client system, organisation, health worker) is inside as a 96-bit BLAKE2b digest, compared when the
  cursor is opened: another requester's cursor is refused (403), as before.
* **Expiry.** A cursor says when it expires (``search_session_ttl`` after it was made). A key period
  lasts ``ttl`` seconds and its key is kept (in Redis with ``EXAT``) only until every cursor sealed
  under it has expired, then deleted: a URL found in a log later can never be opened again, as a
  session record could not be found again once Redis dropped it.

Keys (``CursorKeys``) live where the sessions live: in Redis when configured, so every worker and node
opens every cursor (``RedisCursorKeys``: one ``SET NX`` per key period and process, then cached), or in
this process (``LocalCursorKeys``). A key is 128 random bits made by whichever process needs it first.
A page whose sealed cursor would be longer than ``MAX_SEALED`` characters (a search of many long
values) is stored as a session record under a random cursor instead, as before, so no link outgrows
what proxies accept in a URL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
import redis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sharing_api.errors import ServiceUnavailable
from sharing_api.fhir.search import MAX_CURSOR_BYTES, PATIENT_PARAMS
from sharing_api.matching import NOBODY
from sharing_api.sessions import SearchSessions

__all__ = ["SUBJECT", "CursorKeys", "LocalCursorKeys", "PagingCursors", "RedisCursorKeys"]

VERSION = 1
_HEADER = 5  # version (1 byte), key period (4 bytes)
_NONCE = 12
_TAG = 16
MAX_SEALED = MAX_CURSOR_BYTES
"""Characters of a sealed cursor at most; a longer page goes to the session store (a short random
cursor). Links stay well inside the 8 KB request line proxies accept by default."""
SUBJECT = (0, 1)
"""How a sealed parameter says "the patient": ``0`` for their identifier's value alone (``value``),
``1`` for ``system|value``. JSON integers, which no parameter value is (values are strings)."""
_AAD_PREFIX = b"dho-share paging cursor\x00"
PAD = 256
"""Sealed pages are padded to a multiple of this many bytes (a cursor of 386 characters for most)."""

Subject = tuple[str, str]
"""The patient a search is for (identifier system, value): the one the requester's attestation names."""


class CursorKeys(Protocol):
    """The keys of the key periods: ``key(period, make=True)`` makes the period's key if it has none."""

    def key(self, period: int, *, make: bool) -> bytes | None: ...


def _new_key() -> bytes:
    return AESGCM.generate_key(bit_length=128)


class LocalCursorKeys:
    """Keys in this process, for a single-process server (``LocalSessions``' counterpart)."""

    def __init__(self) -> None:
        self._keys: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def key(self, period: int, *, make: bool) -> bytes | None:
        found = self._keys.get(period)
        if found is not None or not make:
            return found
        with self._lock:
            for old in [p for p in self._keys if p < period - 1]:
                del self._keys[old]  # no cursor sealed under it is still valid
            return self._keys.setdefault(period, _new_key())


class RedisCursorKeys:
    """Keys in Redis under ``dho:cursor-key:<period length>:<period>``, shared by every worker and node.

    The first process to need a period's key makes it (``SET NX``, one round trip with the ``GET`` that
    reads whichever key won); every process then keeps it in memory, so a search costs no Redis call,
    and reads it again after ``RECHECK`` seconds: should Redis lose the key (a flush, a failover to a
    replica that had not got it), the processes agree on the new one within that time, and only the
    cursors made meanwhile are lost, as sessions were. Redis deletes the key (``EXAT``) once every
    cursor sealed under it has expired. Failing Redis is the sessions' clear 503 (fail closed: no cursor
    is made or opened without its key)."""

    RECHECK = 30.0

    def __init__(
        self,
        client: redis.Redis,
        seconds: int,
        prefix: str = "dho:cursor-key:",
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.seconds = seconds  # the length of a key period (the cursors' lifetime)
        self.prefix = f"{prefix}{seconds}:"  # a period's number means something only with its length
        self.monotonic = monotonic
        self._keys: dict[int, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def key(self, period: int, *, make: bool) -> bytes | None:
        found = self._keys.get(period)
        now = self.monotonic()
        if found is not None and now - found[1] < self.RECHECK:
            return found[0]
        name = self.prefix + str(period)
        try:
            if make:
                pipe = self.client.pipeline(transaction=False)
                pipe.set(name, _new_key(), nx=True, exat=(period + 2) * self.seconds + 1)
                pipe.get(name)
                raw = pipe.execute()[1]
            else:
                raw = self.client.get(name)
        except redis.RedisError as exc:
            raise ServiceUnavailable("the search-session store is unavailable; retry shortly") from exc
        with self._lock:
            if make:  # ``period`` is now's: a cursor being opened (not yet authenticated) prunes nothing
                for old in [p for p in self._keys if p < period - 1]:
                    del self._keys[old]  # no cursor sealed under it is still valid
            if raw is None:  # never made, or deleted with every cursor sealed under it expired
                self._keys.pop(period, None)
                return None
            self._keys[period] = (bytes(raw), now)
        return bytes(raw)


def sealable(params: list[list[Any]], subject: Subject) -> list[list[Any]] | None:
    """``params`` with every mention of ``subject`` in a patient parameter replaced by ``SUBJECT``;
    ``None`` when a patient parameter names anyone else, which a sealed cursor must not carry (the
    searches that reach paging name the attested patient only, or ``Patient/$match``'s nobody)."""
    system, value = subject
    out: list[list[Any]] = []
    for name, raw in params:
        if name in PATIENT_PARAMS:
            if raw == f"{system}|{value}":
                raw = SUBJECT[1]
            elif raw == value:
                raw = SUBJECT[0]
            elif not raw.startswith(NOBODY + "|"):
                return None
        out.append([name, raw])
    return out


def _restore(params: list[list[Any]], subject: Subject) -> list[list[str]]:
    system, value = subject
    return [
        [name, (f"{system}|{value}" if raw == SUBJECT[1] else value) if isinstance(raw, int) else raw]
        for name, raw in params
    ]


def _associated(header: bytes, tenant: str, subject: Subject) -> bytes:
    return _AAD_PREFIX + header + orjson.dumps([tenant, subject[0], subject[1]])


class PagingCursors:
    """Makes and opens the cursors of search pages, bound to a tenant and a patient (``Subject``).

    A page is ``{"requester": ..., "params": [[name, value], ...], "anchor": ...}``; ``open`` gives it
    back as it was made, or ``None`` for a cursor that is unknown, expired, edited, or made for another
    tenant or patient (indistinguishable)."""

    def __init__(
        self,
        keys: CursorKeys,
        sessions: SearchSessions,
        ttl: int,
        *,
        clock: Callable[[], float] = time.time,
        max_sealed: int = MAX_SEALED,
    ):
        self.keys = keys
        self.sessions = sessions
        self.ttl = ttl
        self.clock = clock
        self.max_sealed = max_sealed

    def make(self, pages: list[dict[str, Any]], *, tenant: str, subject: Subject | None) -> list[str]:
        """A cursor for each page; those too long to seal (or, without a ``subject``, all) share one
        round trip to the session store."""
        now = self.clock()
        period = int(now) // self.ttl
        header = bytes((VERSION,)) + period.to_bytes(4, "big")
        bound = _associated(header, tenant, subject) if subject is not None else b""
        aead: AESGCM | None = None
        cursors: list[str | None] = []
        stored: list[int] = []
        for page in pages:
            params = sealable(page["params"], subject) if subject is not None else None
            sealed = None
            if params is not None:
                if aead is None:
                    key = self.keys.key(period, make=True)
                    assert key is not None  # made when missing
                    aead = AESGCM(key)
                # A list, not an object: the cursor stays short (expiry, requester, parameters, anchor).
                body = _padded(
                    orjson.dumps([int(now) + self.ttl, _digest(page["requester"]), params, page["anchor"]])
                )
                nonce = os.urandom(_NONCE)
                data = header + nonce + aead.encrypt(nonce, body, bound)
                sealed = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
                if len(sealed) > self.max_sealed:
                    sealed = None
            if sealed is None:
                stored.append(len(cursors))
            cursors.append(sealed)
        if stored:
            kept = self.sessions.put_many([{"tenant": tenant, **pages[i]} for i in stored])
            for i, cursor in zip(stored, kept, strict=True):
                cursors[i] = cursor
        return [c for c in cursors if c is not None]

    def open(
        self, cursor: str, *, tenant: str, subject: Subject | None, requester: str
    ) -> dict[str, Any] | None:
        """The page of ``cursor`` (its ``requester`` is the given one if the cursor was made for it,
        else another value), or ``None``."""
        if len(cursor) > self.max_sealed:
            return None
        if len(cursor) < 64:  # a session's random cursor (128 bits: 22 characters); a sealed one is longer
            record = self.sessions.get(cursor)
            if record is None or record.get("tenant") != tenant or "params" not in record:
                return None  # another tenant's cursor is indistinguishable from an expired one
            return record
        data = _decode(cursor) if subject is not None else None
        if subject is None or data is None or len(data) < _HEADER + _NONCE + _TAG or data[0] != VERSION:
            return None
        header = data[:_HEADER]
        period = int.from_bytes(header[1:], "big")
        now = self.clock()
        if period > int(now) // self.ttl + 1 or period < int(now) // self.ttl - 1:
            return None  # from the future, or every cursor sealed then has expired
        key = self.keys.key(period, make=False)
        if key is None:
            return None
        nonce = data[_HEADER : _HEADER + _NONCE]
        try:
            body = AESGCM(key).decrypt(nonce, data[_HEADER + _NONCE :], _associated(header, tenant, subject))
        except InvalidTag:
            return None  # edited, or made for another tenant or patient
        expires, requester_digest, params, anchor = orjson.loads(body)
        if expires <= now:
            return None
        return {
            "tenant": tenant,
            # the requester it was made for is known only by its digest: say whether it is this one
            "requester": requester if hmac.compare_digest(requester_digest, _digest(requester)) else None,
            "params": _restore(params, subject),
            "anchor": anchor,
        }


def _padded(body: bytes) -> bytes:
    """``body`` with trailing blanks (JSON whitespace) to the next multiple of ``PAD`` bytes: the length
    of a cursor says nothing of the page (a continuation and a first page, the anchor's digits)."""
    return body + b" " * (-len(body) % PAD)


def _digest(requester: str) -> str:
    return base64.urlsafe_b64encode(hashlib.blake2b(requester.encode(), digest_size=12).digest()).decode()


def _decode(cursor: str) -> bytes | None:
    """The bytes of a base64url cursor, or ``None``; only the one spelling ``make`` writes is accepted
    (unpadded base64 leaves spare bits in the last character, which a lenient decoder ignores)."""
    try:
        data = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode() != cursor:
        return None
    return data
