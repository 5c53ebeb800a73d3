"""The consumer side: what a hospital or GP system needs to call a dho-share API (or HelseID-shaped APIs).

* :func:`client_assertion` builds the RFC 7523 ``private_key_jwt`` assertion with HelseID's rules
  (``typ: client-authentication+jwt``, ``iss`` = ``sub`` = client id, ``aud`` = issuer, 30 s life) and
  the clinician's attestation in ``assertion_details``.
* :func:`dpop_proof` builds an RFC 9449 proof (``htm``, ``htu`` without query and fragment, ``iat``,
  ``jti``, ``ath`` toward APIs, ``nonce`` when the server asked for one).
* :class:`DhoClient` (``requests``) gets DPoP-bound tokens from the issuer's token endpoint, caches them
  until shortly before expiry, retries once when a server answers ``use_dpop_nonce`` and signs a fresh
  proof for every request.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from base64 import urlsafe_b64encode
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SigningKey = ECKey | OKPKey | RSAKey


def _b64(data: bytes) -> str:
    return urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


#: JWK members of a public key that a DPoP proof's ``jwk`` carries (RFC 9449 §4.2: the public key only).
_PUBLIC_MEMBERS = {"EC": ("kty", "crv", "x", "y"), "OKP": ("kty", "crv", "x"), "RSA": ("kty", "n", "e")}


def default_alg(key: SigningKey) -> str:
    """The algorithm a key signs with unless told otherwise: its JWK ``alg`` if it has one (HelseID keys
    carry e.g. ``RS512``), else ES256/ES384/ES512 by curve, EdDSA, or PS256 for RSA."""
    named = key.as_dict(private=False).get("alg")
    if isinstance(named, str) and named:
        return named
    if isinstance(key, ECKey):
        return {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}[str(key.curve_name)]
    if isinstance(key, OKPKey):
        return "EdDSA"
    return "PS256"


def client_assertion(
    key: SigningKey,
    *,
    client_id: str,
    issuer: str,
    now: float | None = None,
    assertion_details: Mapping[str, Any] | list[Any] | None = None,
    lifetime: int = 30,
    alg: str | None = None,
) -> str:
    """A signed client assertion for ``issuer``'s token endpoint (RFC 7523 §3, HelseID profile).

    ``alg`` defaults to :func:`default_alg` of ``key`` (e.g. ``RS512`` for a HelseID RSA key)."""
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": issuer,
        "iat": issued,
        "nbf": issued,
        "exp": issued + lifetime,
        "jti": uuid.uuid4().hex,
    }
    if assertion_details is not None:
        claims["assertion_details"] = assertion_details
    header: dict[str, Any] = {"typ": "client-authentication+jwt", "alg": alg or default_alg(key)}
    if key.kid:
        header["kid"] = key.kid
    return jwt.encode(header, claims, key, algorithms=[header["alg"]])


def htu(url: str) -> str:
    """The ``htu`` for ``url``: without query and fragment (RFC 9449 §4.2)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def dpop_proof(
    key: SigningKey,
    *,
    method: str,
    url: str,
    now: float | None = None,
    access_token: str | None = None,
    nonce: str | None = None,
    alg: str | None = None,
) -> str:
    """A DPoP proof for one request (RFC 9449 §4.2), with ``ath`` when an access token is sent.

    ``key`` may be EC, OKP (Ed25519) or RSA; ``alg`` defaults to :func:`default_alg` of ``key``."""
    claims: dict[str, Any] = {
        "jti": uuid.uuid4().hex,
        "htm": method.upper(),
        "htu": htu(url),
        "iat": int(now if now is not None else time.time()),
    }
    if access_token is not None:
        claims["ath"] = _b64(hashlib.sha256(access_token.encode("ascii")).digest())
    if nonce is not None:
        claims["nonce"] = nonce
    members = _PUBLIC_MEMBERS[str(key.key_type)]
    public = {k: v for k, v in key.as_dict(private=False).items() if k in members}
    alg = alg or default_alg(key)
    return jwt.encode({"typ": "dpop+jwt", "alg": alg, "jwk": public}, claims, key, algorithms=[alg])


class TokenError(RuntimeError):
    """The token endpoint refused: ``error`` and ``description`` as it sent them."""

    def __init__(self, status: int, error: str, description: str):
        super().__init__(f"{status} {error}: {description}")
        self.status, self.error, self.description = status, error, description


@dataclass
class DhoClient:
    """A requests-based client for a DPoP-protected API.

    :param issuer: the token service's issuer URL (its discovery document names the token endpoint).
    :param client_key: the private key registered for ``client_id`` (signs client assertions): EC,
        Ed25519 or RSA (at least 2048 bits).
    :param dpop_key: the key tokens are bound to (a fresh EC key per client by default; EC, Ed25519 or
        RSA, e.g. the HelseID client's RSA key).
    :param client_alg: the client assertion's algorithm (default :func:`default_alg` of ``client_key``,
        e.g. ``RS512`` for an RSA JWK that names it, else ``PS256`` for RSA).
    :param dpop_alg: the DPoP proofs' algorithm (default :func:`default_alg` of ``dpop_key``).
    :param attestation: the ``nhn:tillitsrammeverk:parameters`` object for ``assertion_details``.
    """

    issuer: str
    client_id: str
    client_key: SigningKey
    scope: str
    attestation: Mapping[str, Any] | None = None
    dpop_key: SigningKey = field(default_factory=lambda: ECKey.generate_key("P-256", private=True))
    client_alg: str | None = None
    dpop_alg: str | None = None
    session: requests.Session = field(default_factory=requests.Session)
    clock: Callable[[], float] = time.time
    timeout: float = 10.0
    _token: str | None = field(default=None, init=False, repr=False)
    _expires: float = field(default=0.0, init=False)
    _nonces: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _token_endpoint: str | None = field(default=None, init=False)

    def token_endpoint(self) -> str:
        if self._token_endpoint is None:
            doc = self.session.get(
                self.issuer.rstrip("/") + "/.well-known/openid-configuration", timeout=self.timeout
            )
            doc.raise_for_status()
            self._token_endpoint = str(doc.json()["token_endpoint"])
        return self._token_endpoint

    def access_token(self) -> str:
        """A valid token, from the cache when it has more than 30 s left."""
        if self._token is not None and self.clock() < self._expires - 30:
            return self._token
        endpoint = self.token_endpoint()
        response = self._post_token(endpoint)
        if response.status_code == 400 and response.json().get("error") == "use_dpop_nonce":
            self._remember_nonce(endpoint, response)
            response = self._post_token(endpoint)
        body = response.json()
        if response.status_code != 200:
            raise TokenError(response.status_code, body.get("error", "?"), body.get("error_description", ""))
        self._token = str(body["access_token"])
        self._expires = self.clock() + int(body.get("expires_in", 60))
        return self._token

    def _post_token(self, endpoint: str) -> requests.Response:
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(
                self.client_key,
                client_id=self.client_id,
                issuer=self.issuer,
                assertion_details=self.attestation,
                alg=self.client_alg,
            ),
        }
        proof = dpop_proof(
            self.dpop_key,
            method="POST",
            url=endpoint,
            nonce=self._nonces.get(_origin(endpoint)),
            alg=self.dpop_alg,
        )
        return self.session.post(endpoint, data=form, headers={"DPoP": proof}, timeout=self.timeout)

    def _remember_nonce(self, url: str, response: requests.Response) -> None:
        nonce = response.headers.get("DPoP-Nonce")
        if nonce:
            self._nonces[_origin(url)] = nonce

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """``method url`` with the token and a fresh proof; one retry when the server wants a nonce."""
        for attempt in range(2):
            token = self.access_token()
            proof = dpop_proof(
                self.dpop_key,
                method=method,
                url=url,
                access_token=token,
                nonce=self._nonces.get(_origin(url)),
                alg=self.dpop_alg,
            )
            headers = {**kwargs.pop("headers", {}), "Authorization": f"DPoP {token}", "DPoP": proof}
            response = self.session.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
            challenge = response.headers.get("WWW-Authenticate", "")
            if attempt == 0 and response.status_code == 401 and "use_dpop_nonce" in challenge:
                self._remember_nonce(url, response)
                kwargs["headers"] = {k: v for k, v in headers.items() if k not in ("Authorization", "DPoP")}
                continue
            return response
        return response


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def attestation(
    *,
    legal_entity: str,
    point_of_care: str,
    patient: tuple[str, str] | None,
    hpr_number: str | None = None,
    practitioner_pid: str | None = None,
    purpose_of_use: str = "TREAT",
    authorization: str = "LE",
    healthcare_service: str = "KP01",
    decision_ref: str | None = None,
    decision_ref_description: str | None = None,
    toa: int | None = None,
) -> dict[str, Any]:
    """An ``nhn:tillitsrammeverk:parameters`` attestation (HelseID spelling) for one patient.

    ``patient`` is (identifier system, value); ``authorization`` a 9060 code (LE doctor, SP nurse...);
    ``decision_ref_description`` the EPJ's words for the care relation; ``toa`` the time of attestation
    (epoch seconds, Tillitsrammeverk §4.6.1).
    """
    orgnr = "urn:oid:2.16.578.1.12.4.1.4.101"
    practitioner: dict[str, Any] = {
        "authorization": {"code": authorization, "system": "urn:oid:2.16.578.1.12.4.1.1.9060"},
        "legal_entity": {"id": legal_entity, "system": orgnr},
        "point_of_care": {"id": point_of_care, "system": orgnr},
    }
    if practitioner_pid:
        practitioner["identifier"] = {"id": practitioner_pid, "system": "urn:oid:2.16.578.1.12.4.1.4.1"}
    if hpr_number:
        practitioner["hpr_nr"] = {"id": hpr_number, "system": "urn:oid:2.16.578.1.12.4.1.4.4"}
    return {
        "type": "nhn:tillitsrammeverk:parameters",
        "practitioner": practitioner,
        "care_relationship": {
            "healthcare_service": {"code": healthcare_service, "system": "urn:oid:2.16.578.1.12.4.1.1.8663"},
            "purpose_of_use": {"code": purpose_of_use, "system": "urn:oid:2.16.840.1.113883.1.11.20448"},
            "decision_ref": {
                "id": decision_ref or str(uuid.uuid4()),
                "user_selected": True,
                **({"description": decision_ref_description} if decision_ref_description else {}),
            },
        },
        "patients": [{"identifier": {"id": patient[1], "system": patient[0]}}] if patient else [{}],
        **({"toa": toa} if toa is not None else {}),
    }
