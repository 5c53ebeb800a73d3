"""Trust in configured external issuers (a real HelseID), next to our own token service.

domain.md "Tokens": the API trusts a real HelseID issuer *by configuration*: issuer URL, discovery
document, JWKS cached with bounded staleness. Three pieces:

* :class:`TrustedIssuer`: the configuration of one issuer (issuer URL, our audience at that issuer,
  allowed algorithms, optionally an explicit ``jwks_uri``), and the :class:`~auth.tokens.TokenPolicy`
  its tokens are verified with.
* :class:`IssuerKeys`: the issuer's verification keys, fetched from
  ``<issuer>/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 §4) -> ``jwks_uri`` ->
  JWK Set (RFC 7517 §5), cached, refreshed with bounded staleness, and usable as the ``keys`` callable of
  :func:`auth.tokens.verify_access_token` (``IssuerKeys.key``).
* :class:`IssuerDirectory`: the token's (unverified) ``iss`` -> ``(TokenPolicy, key lookup)`` for our own
  issuer and the trusted external ones; plugs into :class:`auth.resource.ResourceGuard` as ``issuers``.

**Where keys come from.** Only from configuration and the discovery document: the issuer URL is
configured, the discovery document must name exactly that issuer (OIDC Discovery §4.3, RFC 8414 §3.3),
and its ``jwks_uri`` is the only key URL ever fetched. Nothing a token says is ever fetched: ``jku``,
``x5u``, ``jwk`` and ``x5c`` headers are refused by the verifier before any key lookup, and ``kid`` is
only compared with the ``kid`` of cached keys, never put into a URL (AUTH-10, RFC 8725 §3.10).

**Fetching.** ``requests`` with short timeouts and a total time budget per document, no redirects (a
redirect would let whoever answers the configured URL point us anywhere), a size cap on the body
(:data:`MAX_DOCUMENT_BYTES`), strict JSON (no duplicate members), ``https`` only (plain ``http`` is
accepted for loopback hosts so that tests can serve documents themselves), and by default no proxy,
``.netrc`` or other environment settings: pass a configured ``requests.Session`` if an egress proxy is
needed.

**Caching and staleness** (all on a monotonic clock)::

    age < max_age                   serve the cache; no fetch
    max_age <= age                  refresh (at most once per min_refresh_interval); if that fails,
                                    keep serving the last keys ...
    max_stale <= age                ... until here: then fail closed (StateUnavailable, 503)
    unknown kid                     refresh at most once per min_refresh_interval (REL-06: a new key
                                    at the issuer is picked up at once, and an attacker sending random
                                    kids causes at most one fetch per interval); otherwise ``None``

A refresh fetches the discovery document (unless ``jwks_uri`` is configured) and the JWK Set. Only one
thread fetches at a time. Threads that need its result (an unknown ``kid``, no keys yet) wait for it
instead of fetching again; threads whose keys are merely past ``max_age`` keep using them meanwhile, so
a hanging issuer never stalls requests with known keys. A refresh that yields no usable key counts as
failed, and the last good keys stay in use.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey, import_key

from auth._jose import (
    ALG_CRV,
    ALG_KTY,
    MIN_RSA_BITS,
    PRIVATE_JWK_MEMBERS,
    JoseFormatError,
    b64url_decode,
    check_allowlist,
    loads_object,
)
from auth.errors import StateUnavailable
from auth.tokens import HELSEID_TOKEN_ALGS, KeyLookup, TokenPolicy

__all__ = [
    "DISCOVERY_PATH",
    "MAX_DOCUMENT_BYTES",
    "MAX_JWKS_KEYS",
    "IssuerDirectory",
    "IssuerKeys",
    "TrustedIssuer",
]

log = logging.getLogger(__name__)

#: OpenID Connect Discovery 1.0 §4: appended to the issuer (without its trailing ``/``).
DISCOVERY_PATH = "/.well-known/openid-configuration"
#: Largest discovery document or JWK Set read. HelseID's discovery document is a few KB, a JWK Set with
#: certificate chains some tens of KB.
MAX_DOCUMENT_BYTES = 128 * 1024
#: Largest number of keys considered in one JWK Set.
MAX_JWKS_KEYS = 64
_KID = re.compile(r"[\x21-\x7e]{1,256}")  # as auth.tokens accepts in a header


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_problem(url: str, *, issuer: bool = False) -> str | None:
    """Why ``url`` may not be used to fetch keys, or ``None`` if it may.

    ``https`` with a host and no credentials or fragment; ``http`` only for a loopback host. An issuer
    identifier also has no query (OIDC Discovery §3, RFC 8414 §2).
    """
    if not isinstance(url, str) or not url.isascii() or any(c.isspace() for c in url):
        return "must be an ASCII URL without whitespace"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return "is not a valid URL"
    if not host:
        return "must have a host"
    if parts.scheme == "http":
        if not _is_loopback(host):
            return "must use https (http only for loopback hosts)"
    elif parts.scheme != "https":
        return "must use https"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials"
    if parts.fragment or url.endswith("#"):
        return "must not have a fragment"
    if issuer and (parts.query or "?" in url):
        return "must not have a query"
    return None


@dataclass(frozen=True, slots=True)
class TrustedIssuer:
    """Configuration of one external issuer whose access tokens the API accepts.

    :param issuer: the issuer identifier, exactly as in its tokens' ``iss`` and its discovery document
        (e.g. ``https://helseid-sts.nhn.no``). ``https`` required (``http`` only for loopback hosts).
    :param audience: the ``aud`` this API has at that issuer (e.g. ``nhn:dho-share``).
    :param algorithms: accepted token algorithms (asymmetric only); default
        :data:`auth.tokens.HELSEID_TOKEN_ALGS`. Configure from the issuer's
        ``id_token_signing_alg_values_supported`` rather than widening the default.
    :param jwks_uri: the JWK Set URL, if it should be configured rather than discovered.
    :param leeway: seconds of clock tolerance (0..300), as in :class:`~auth.tokens.TokenPolicy`.
    :raise ValueError: a URL that may not be fetched, an algorithm that may not be allowed, a bad leeway.
    """

    issuer: str
    audience: str
    algorithms: tuple[str, ...] = HELSEID_TOKEN_ALGS
    jwks_uri: str | None = None
    leeway: int = 10

    def __post_init__(self) -> None:
        problem = _url_problem(self.issuer, issuer=True)
        if problem:
            raise ValueError(f"the issuer URL {problem}")
        if self.jwks_uri is not None and (problem := _url_problem(self.jwks_uri)):
            raise ValueError(f"the jwks_uri {problem}")
        check_allowlist(self.algorithms)
        self.policy()  # validates audience and leeway the same way TokenPolicy does

    @property
    def discovery_url(self) -> str:
        """``<issuer>/.well-known/openid-configuration`` (OIDC Discovery §4.1)."""
        return self.issuer.rstrip("/") + DISCOVERY_PATH

    def policy(self) -> TokenPolicy:
        """How this issuer's tokens are verified: its issuer and algorithms, our audience, ``cnf.jkt``
        required (the API accepts DPoP-bound tokens only, RFC 9449 §7), ``sub`` optional (HelseID
        machine tokens have none)."""
        return TokenPolicy(
            issuer=self.issuer,
            audience=self.audience,
            algorithms=self.algorithms,
            leeway=self.leeway,
            require_sub=False,
            require_cnf=True,
        )


class _FetchError(Exception):
    """Fetching or reading a document failed; the message is a fixed phrase (for logs)."""


@dataclass(frozen=True, slots=True)
class _Snapshot:
    keys: Mapping[str, ECKey | RSAKey | OKPKey] = field(repr=False)
    fetched_at: float


def _rsa_bits(modulus: Any) -> int:
    if not isinstance(modulus, str):
        return 0
    try:
        return len(b64url_decode(modulus).lstrip(b"\0")) * 8
    except JoseFormatError:
        return 0


def _usable_key(entry: Any, algorithms: tuple[str, ...]) -> tuple[str, ECKey | RSAKey | OKPKey] | None:
    """``(kid, public key)`` for a JWK of the set that can verify one of ``algorithms``, else ``None``.

    Skipped: no or odd ``kid``; a key type or curve none of the algorithms uses; ``use`` other than
    ``sig`` or ``key_ops`` without ``verify`` (RFC 7517 §4.2, §4.3); an ``alg`` not allowed; RSA under
    2048 bits; and any JWK with private members (a published private key is compromised, not trusted).
    """
    if not isinstance(entry, dict):
        return None
    kid = entry.get("kid")
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        return None
    kty = entry.get("kty")
    if kty not in {ALG_KTY[alg] for alg in algorithms}:
        return None
    if entry.get("use", "sig") != "sig":
        return None
    ops = entry.get("key_ops")
    if ops is not None and not (isinstance(ops, list) and "verify" in ops):
        return None
    alg = entry.get("alg")
    if alg is not None and alg not in algorithms:
        return None
    if PRIVATE_JWK_MEMBERS & entry.keys():
        log.warning("a published JWK contains private key material; key ignored")
        return None
    if kty == "RSA" and _rsa_bits(entry.get("n")) < MIN_RSA_BITS:
        return None
    if kty in ("EC", "OKP") and entry.get("crv") not in {
        ALG_CRV[a] for a in algorithms if ALG_KTY[a] == kty and a in ALG_CRV
    }:
        return None
    try:
        key = import_key(entry)
    except (JoseError, ValueError, TypeError):
        return None
    if not isinstance(key, ECKey | RSAKey | OKPKey) or key.is_private:
        return None
    return kid, key


def _keys_of(jwks: Mapping[str, Any], algorithms: tuple[str, ...]) -> dict[str, ECKey | RSAKey | OKPKey]:
    """The usable keys of a JWK Set by ``kid``; the first key wins if a ``kid`` repeats."""
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        raise _FetchError("the JWK Set has no 'keys' array")
    if len(entries) > MAX_JWKS_KEYS:
        raise _FetchError("the JWK Set has too many keys")
    keys: dict[str, ECKey | RSAKey | OKPKey] = {}
    for entry in entries:
        usable = _usable_key(entry, algorithms)
        if usable is not None and usable[0] not in keys:
            keys[usable[0]] = usable[1]
    if not keys:
        raise _FetchError("the JWK Set has no usable signing key")
    return keys


class IssuerKeys:
    """The verification keys of one :class:`TrustedIssuer`, fetched and cached; see the module docstring.

    Thread-safe. ``policy`` is the :class:`~auth.tokens.TokenPolicy` of the issuer's tokens.
    ``key(kid)`` is the ``keys`` callable for :func:`auth.tokens.verify_access_token`; it
    returns ``None`` for a ``kid`` the issuer does not publish (-> 401) and raises
    :class:`~auth.errors.StateUnavailable` (-> 503) when no keys young enough are available (fail closed,
    REL-01). Keys are fetched lazily on first use; call :meth:`refresh` at start-up to fail fast.

    :param issuer: what to trust.
    :param max_age: seconds after a successful fetch before the keys are refreshed (a removed key stops
        being accepted within this time).
    :param max_stale: seconds after a successful fetch beyond which, if every refresh failed, keys are no
        longer served and lookups fail closed.
    :param min_refresh_interval: least seconds between two fetch attempts, whatever triggers them.
    :param timeout: seconds allowed for each document: its body must arrive within this in total, and
        no single read may wait longer (connecting gets at most 2 s of it).
    :param session: the ``requests.Session`` to use (e.g. with an egress proxy); by default a session
        that ignores proxy and ``.netrc`` settings from the environment.
    :param clock: monotonic seconds; injectable for tests.
    :raise ValueError: unless ``0 < min_refresh_interval <= max_age <= max_stale``.
    """

    def __init__(
        self,
        issuer: TrustedIssuer,
        *,
        max_age: float = 600,
        max_stale: float = 6 * 3600,
        min_refresh_interval: float = 60,
        timeout: float = 5.0,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < min_refresh_interval <= max_age <= max_stale or not math.isfinite(max_stale):
            raise ValueError("need 0 < min_refresh_interval <= max_age <= max_stale (finite)")
        if not 0 < timeout <= 60:
            raise ValueError("timeout must be within (0, 60] seconds")
        self.issuer = issuer
        self.policy = issuer.policy()
        self._max_age = max_age
        self._max_stale = max_stale
        self._min_interval = min_refresh_interval
        self._timeout = timeout
        if session is None:
            session = requests.Session()
            session.trust_env = False
        self._session = session
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._last_attempt: float | None = None

    def key(self, kid: str) -> ECKey | RSAKey | OKPKey | None:
        """The issuer's public key with this ``kid``, or ``None`` if it publishes none.

        ``kid`` is only compared with the cached keys' ``kid`` (never part of a URL).

        :raise StateUnavailable: no keys, or only keys older than ``max_stale`` (fail closed).
        """
        snapshot = self._snapshot  # one atomic read: the fast path takes no lock
        if snapshot is None or self._clock() - snapshot.fetched_at >= self._max_age:
            snapshot = self._current(want=None)
        found = snapshot.keys.get(kid)
        if found is None:
            found = self._current(want=kid).keys.get(kid)
        return found

    def __call__(self, kid: str) -> ECKey | RSAKey | OKPKey | None:
        """Same as :meth:`key`, so an ``IssuerKeys`` is itself a :data:`~auth.tokens.KeyLookup`."""
        return self.key(kid)

    def refresh(self) -> bool:
        """Fetch the keys now, whatever their age and the refresh interval (start-up, operations).

        :return: whether the fetch succeeded (``False``: the previous keys are still served).
        :raise StateUnavailable: the fetch failed and there are no keys young enough to fall back on.
        """
        with self._lock:
            now = self._clock()
            fetched = self._attempt(now)
            self._usable(now)
            return fetched

    def _current(self, *, want: str | None) -> _Snapshot:
        """The snapshot to use, after refreshing if needed and allowed.

        Fetches are serialised by the lock. A caller looking for an unknown ``kid``, or with no usable
        keys at all, waits for a fetch in flight (its result may be what it needs) and then finds that
        result instead of fetching again. A caller whose keys are merely past ``max_age`` does not wait:
        it keeps using them while another thread refreshes.
        """
        if not self._lock.acquire(blocking=False):
            snapshot = self._snapshot
            young = snapshot is not None and self._clock() - snapshot.fetched_at < self._max_stale
            if want is None and young and snapshot is not None:
                return snapshot
            self._lock.acquire()
        try:
            now = self._clock()
            snapshot = self._snapshot
            fresh = snapshot is not None and now - snapshot.fetched_at < self._max_age
            if fresh and snapshot is not None and (want is None or want in snapshot.keys):
                return snapshot  # another thread refreshed while we waited
            if self._last_attempt is None or now - self._last_attempt >= self._min_interval:
                self._attempt(now)
            return self._usable(now)
        finally:
            self._lock.release()

    def _attempt(self, now: float) -> bool:
        """One fetch attempt; on success the cache is replaced, on failure it is kept."""
        self._last_attempt = now
        try:
            keys = self._fetch()
        except _FetchError as err:
            log.warning("refreshing the keys of %s failed: %s", self.issuer.issuer, err)
            return False
        self._snapshot = _Snapshot(keys, now)
        return True

    def _usable(self, now: float) -> _Snapshot:
        snapshot = self._snapshot
        if snapshot is None or now - snapshot.fetched_at >= self._max_stale:
            raise StateUnavailable("the keys of a trusted issuer are unavailable")
        return snapshot

    def _fetch(self) -> dict[str, ECKey | RSAKey | OKPKey]:
        jwks_uri = self.issuer.jwks_uri
        if jwks_uri is None:
            discovery = self._get_json(self.issuer.discovery_url)
            # OIDC Discovery §4.3 / RFC 8414 §3.3: the document must be the configured issuer's own.
            if discovery.get("issuer") != self.issuer.issuer:
                raise _FetchError("the discovery document names another issuer")
            discovered = discovery.get("jwks_uri")
            if not isinstance(discovered, str) or _url_problem(discovered) is not None:
                raise _FetchError("the discovery document has no acceptable jwks_uri")
            jwks_uri = discovered
        return _keys_of(self._get_json(jwks_uri), self.policy.algorithms)

    def _get_json(self, url: str) -> dict[str, Any]:
        """GET ``url`` and parse a JSON object, within the time budget and the size cap.

        The body is read with ``read1`` (whatever has arrived, decoded), so the total budget holds even
        against a server that trickles bytes just inside the per-read timeout; the size cap applies to
        the decoded bytes, so a compressed bomb is cut off too.
        """
        deadline = time.monotonic() + self._timeout
        body = bytearray()
        try:
            with self._session.get(
                url,
                headers={"Accept": "application/json, application/jwk-set+json"},
                timeout=(min(self._timeout, 2.0), self._timeout),
                allow_redirects=False,
                stream=True,
            ) as response:
                if response.status_code != 200:
                    raise _FetchError(f"HTTP status {response.status_code}")
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > MAX_DOCUMENT_BYTES:
                    raise _FetchError("document too large")
                read = getattr(response.raw, "read1", None) or response.raw.read  # read1: urllib3 >= 2
                while chunk := read(16 * 1024, decode_content=True):
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise _FetchError("document too large")
                    if time.monotonic() > deadline:
                        raise _FetchError("document took too long")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as err:
            raise _FetchError(f"request failed ({type(err).__name__})") from err
        try:
            return loads_object(bytes(body))
        except JoseFormatError as err:
            raise _FetchError("document is not a JSON object") from err


class IssuerDirectory:
    """Which policy and keys verify a token, chosen by its *unverified* ``iss``.

    Matches :data:`auth.resource.IssuerLookup`: ``directory(iss) -> (TokenPolicy, key lookup) | None``.

    ``iss`` here is read before the signature is checked, so it is attacker-controlled: it only selects
    which issuer's keys to try. The signature decides: a token claiming HelseID's ``iss`` verifies only
    with a key HelseID publishes, and :func:`~auth.tokens.verify_access_token` checks again, after the
    signature, that ``iss`` equals the selected policy's issuer. An ``iss`` that names no configured
    issuer gets ``None`` (401) and causes no lookup, no fetch. Comparison is exact (no normalisation of
    case or trailing ``/``), as RFC 9068 §4 and OIDC Discovery §4.3 require.

    :param own: our token service's policy and key lookup, if this API accepts its tokens.
    :param trusted: external issuers.
    :raise ValueError: the same issuer configured twice.
    """

    def __init__(
        self,
        *,
        own: tuple[TokenPolicy, KeyLookup] | None = None,
        trusted: Iterable[IssuerKeys] = (),
    ) -> None:
        entries: dict[str, tuple[TokenPolicy, KeyLookup]] = {}
        candidates: list[tuple[TokenPolicy, KeyLookup]] = [] if own is None else [own]
        candidates.extend((keys.policy, keys.key) for keys in trusted)
        for policy, lookup in candidates:
            if policy.issuer in entries:
                raise ValueError("an issuer may be configured only once")
            entries[policy.issuer] = (policy, lookup)
        self._entries = entries

    def __call__(self, iss: str) -> tuple[TokenPolicy, KeyLookup] | None:
        """The policy and keys for ``iss``, or ``None`` for an issuer we do not trust."""
        return self._entries.get(iss)

    @property
    def issuers(self) -> tuple[str, ...]:
        """The trusted issuer identifiers, in configuration order."""
        return tuple(self._entries)
