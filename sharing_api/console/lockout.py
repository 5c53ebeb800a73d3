"""Failed auditor logins counted per account and per source address; too many locks the login for the
rest of the window (OWASP Authentication Cheat Sheet "account lockout" and "throttling").

Counters live in Redis when configured (every worker sees them), in this process otherwise, like the
console's sessions. The algorithm is ``auth.ratelimit``'s fixed window: time is cut into windows of
``window_seconds``; each ``(kind, key, window)`` has a counter; each *failed* login adds one to the
account's counter and to the source address's; once a counter has reached its limit, every login
attempt for that account (or from that address) is refused, right password or not, without checking
the password, until the window ends (429 with ``Retry-After``). A successful login clears the account's
counter. The known price of a fixed window, as in ``auth.ratelimit``: up to twice the limit across a
window boundary.

Keys are ``dho:console:login:<scope>:<kind>:<sha256(key)[:32]>:<window>``: usernames and addresses
are hashed, and ``scope`` names the deployment (its database), so deployments sharing one Redis never
lock each other out.

**Fails closed**: a Redis error raises ``LoginGuardUnavailable`` (the console answers 503): without
its counters the login would have no brake.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import redis.exceptions

from auth.ratelimit import window

__all__ = ["Lock", "LoginGuard", "LoginGuardUnavailable"]

ACCOUNT = "account"
ADDRESS = "address"


class LoginGuardUnavailable(RuntimeError):
    """The failure counters cannot be read or written (Redis down): refuse logins."""


@dataclass(frozen=True, slots=True)
class Lock:
    """Logins are locked for ``kind`` (``account`` or ``address``) for ``retry_after`` more seconds."""

    kind: str
    retry_after: int


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class LoginGuard:
    """Failed-login counters (module docstring). ``clock`` is replaced by tests (no test sleeps)."""

    def __init__(
        self,
        client: redis.Redis | None,
        *,
        scope: str,
        per_account: int,
        per_address: int,
        window_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (
            ("per_account", per_account),
            ("per_address", per_address),
            ("window_seconds", window_seconds),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1")
        self.client = client
        self.prefix = f"dho:console:login:{_digest(scope)[:12]}:"
        self.limits = {ACCOUNT: per_account, ADDRESS: per_address}
        self.window_seconds = window_seconds
        self.clock = clock
        self._local: dict[str, int] = {}
        self._lock = threading.Lock()

    def _names(self, username: str, address: str) -> tuple[dict[str, str], int]:
        index, retry_after = window(self.clock(), self.window_seconds)
        names = {
            ACCOUNT: f"{self.prefix}{ACCOUNT}:{_digest(username.strip().lower())}:{index}",
            ADDRESS: f"{self.prefix}{ADDRESS}:{_digest(address)}:{index}",
        }
        return names, retry_after

    def _redis(self, call: Callable[[redis.Redis], Any]) -> Any:
        assert self.client is not None
        try:
            return call(self.client)
        except redis.exceptions.RedisError as err:
            raise LoginGuardUnavailable("the console's login counters are unavailable") from err

    def _lock_of(self, counts: dict[str, int], retry_after: int) -> Lock | None:
        for kind in (ACCOUNT, ADDRESS):
            if counts[kind] >= self.limits[kind]:
                return Lock(kind, retry_after)
        return None

    def locked(self, username: str, address: str) -> Lock | None:
        """The lock on this account or address now, or None (may try a password)."""
        names, retry_after = self._names(username, address)
        if self.client is None:
            with self._lock:
                counts = {kind: self._local.get(name, 0) for kind, name in names.items()}
        else:
            values = self._redis(lambda c: c.mget([names[ACCOUNT], names[ADDRESS]]))
            counts = {ACCOUNT: int(values[0] or 0), ADDRESS: int(values[1] or 0)}
        return self._lock_of(counts, retry_after)

    def failed(self, username: str, address: str) -> Lock | None:
        """Count one failed login; the lock this failure completed (the lock begins now), or None."""
        names, retry_after = self._names(username, address)
        if self.client is None:
            with self._lock:
                index = int(names[ACCOUNT].rsplit(":", 1)[1])
                # counters of past windows are dropped (the previous one kept: clocks may straddle)
                self._local = {k: v for k, v in self._local.items() if int(k.rsplit(":", 1)[1]) >= index - 1}
                for name in names.values():
                    self._local[name] = self._local.get(name, 0) + 1
                counts = {kind: self._local[name] for kind, name in names.items()}
        else:

            def count(c: redis.Redis) -> list[Any]:
                pipe = c.pipeline(transaction=True)
                for name in names.values():
                    pipe.incr(name)
                    pipe.expire(name, self.window_seconds)
                return list(pipe.execute())

            done = self._redis(count)
            counts = {ACCOUNT: int(done[0]), ADDRESS: int(done[2])}
        for kind in (ACCOUNT, ADDRESS):
            if counts[kind] == self.limits[kind]:
                return Lock(kind, retry_after)
        return None

    def succeeded(self, username: str, address: str) -> None:
        """A correct password: the account's failures of this window are forgiven (not the address's)."""
        names, _ = self._names(username, address)
        if self.client is None:
            with self._lock:
                self._local.pop(names[ACCOUNT], None)
        else:
            self._redis(lambda c: c.delete(names[ACCOUNT]))
