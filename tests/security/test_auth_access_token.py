"""AUTH-01..AUTH-17: access-token validation at the resource server, over HTTP (security-tests.md, P0).

Every negative test sends a request that differs from an accepted one in exactly one thing, checks the
refusal (status, ``WWW-Authenticate: DPoP`` with ``error`` and ``algs``, an OperationOutcome without the
patient's number or the measurement, nothing stored) and then the OIDF sanity step: the real token with
a fresh proof still works. Forged tokens are the real token's claims re-signed with the token service's
own signing key (:meth:`Probe.mint`), so only the property under test is wrong. Most tests run twice,
against a read (PHI must not leak) and a write (nothing may be stored).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from joserfc.jwk import ECKey, Key, RSAKey
from sqlalchemy import select

from auth.client import ASSERTION_TYPE, DhoClient, attestation, client_assertion
from auth.dpop import DPOP_ALGS
from auth.server import INTROSPECTION_PATH, REVOCATION_PATH
from sharing_api.app import create_app
from sharing_api.fhir.identifiers import FNR
from sharing_api.serving import SERVERS
from sharing_api.settings import Settings, TrustedIssuerSetting
from sharing_api.store.schema import audit_entries
from tests.api_client import HOSPITAL, HOSPITAL_UNIT, HPR, WRITE, ApiClient
from tests.auth import factories
from tests.auth.test_external import IssuerServer
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate
from tests.live_server import live_server
from tests.security.helpers import (
    Probe,
    Scene,
    audit_failures,
    b64url_decode,
    challenge_params,
    jwt_parts,
    server_env,
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def as_kid(probe: Probe) -> str:
    return probe.services.token_service.keyset.kid


def refused(probe: Probe, token: str, *, error: str = "invalid_token", status: int = 401) -> None:
    """``token`` (with a valid proof for it) is refused, changes nothing, and the real token still works."""
    before = probe.snapshot()
    probe.assert_refused(probe.send_with(token), status=status, error=error, before=before)
    probe.assert_still_works()


# --- AUTH-01 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_proof", [False, True], ids=["no-headers", "proof-only"])
def test_auth_01_no_authorization_header_is_challenged_with_algs(probe: Probe, with_proof: bool) -> None:
    before = probe.snapshot()
    response = probe.send({"DPoP": probe.proof()} if with_proof else {})
    probe.assert_refused(response, status=401, before=before)
    assert response.headers["WWW-Authenticate"].startswith("DPoP ")
    assert challenge_params(response)["algs"].split() == list(DPOP_ALGS)  # the verifier's own allowlist
    assert {"ES256", "RS512", "PS256"} <= set(DPOP_ALGS)
    probe.assert_still_works()


# --- AUTH-02 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_header", [False, True], ids=["query-only", "query-and-header"])
def test_auth_02_token_in_the_query_string_is_never_accepted(reader: Probe, with_header: bool) -> None:
    path = f"{reader.path}?access_token={reader.token}"
    headers = reader.headers() if with_header else {"DPoP": reader.proof()}
    before = reader.snapshot()
    reader.assert_refused(reader.send(headers, path=path), status=(400, 401), before=before)
    reader.assert_still_works()


@pytest.mark.parametrize("with_header", [False, True], ids=["form-only", "form-and-header"])
def test_auth_02_token_in_a_form_body_is_never_accepted(reader: Probe, with_header: bool) -> None:
    path = reader.path.rsplit("/", 1)[0] + "/_search"
    proof = reader.proof(method="POST", url=reader.client.public + path)
    headers = {"Authorization": f"DPoP {reader.token}", "DPoP": proof} if with_header else {"DPoP": proof}
    form = {"patient.identifier": f"{FNR}|{reader.patient}", "access_token": reader.token}
    before = reader.snapshot()
    response = reader.send(headers, path=path, method="POST", data=form)
    reader.assert_refused(response, status=(400, 401), before=before)
    reader.assert_still_works()


@pytest.mark.parametrize("where", ["query", "form"])
def test_auth_02_token_outside_the_header_refusal_is_audited_without_the_token(
    reader: Probe, where: str
) -> None:
    before = reader.snapshot()
    if where == "query":
        response = reader.send(reader.headers(), path=f"{reader.path}?access_token={reader.token}")
    else:
        path = reader.path.rsplit("/", 1)[0] + "/_search"
        proof = reader.proof(method="POST", url=reader.client.public + path)
        form = {"patient.identifier": f"{FNR}|{reader.patient}", "access_token": reader.token}
        headers = {"Authorization": f"DPoP {reader.token}", "DPoP": proof}
        response = reader.send(headers, path=path, method="POST", data=form)
    assert response.status_code in (400, 401)
    assert audit_failures(reader.services) == before.audit_failures + 1
    with reader.services.engine.connect() as conn:
        events = b"".join(row.event for row in conn.execute(select(audit_entries.c.event)))
    signature = reader.token.rsplit(".", 1)[1]
    assert signature.encode() not in events
    assert base64.b64encode(reader.token.encode()) not in events


# --- AUTH-03 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "nOnE", "NONE"])
@pytest.mark.parametrize("signature", [b"", b"\x00" * 64], ids=["empty-signature", "junk-signature"])
def test_auth_03_alg_none_is_refused(probe: Probe, alg: str, signature: bytes) -> None:
    header = {"typ": "at+jwt", "alg": alg, "kid": as_kid(probe)}
    claims = {**probe.claims(), "jti": uuid.uuid4().hex}
    refused(probe, factories.raw_jws(header, claims, signature))


def test_auth_03_valid_token_with_its_signature_stripped_is_refused(probe: Probe) -> None:
    header, payload, _ = probe.mint().split(".")
    refused(probe, f"{header}.{payload}.")


# --- AUTH-04 ---------------------------------------------------------------------------------------


def _as_public_key_encodings(probe: Probe) -> dict[str, bytes]:
    public = probe.services.token_service.keyset.active
    jwk = public.as_dict(private=False)
    return {
        "pem": public.as_pem(private=False),
        "jwk-json": json.dumps(jwk).encode(),
        "jwk-x-bytes": b64url_decode(jwk["x"]),  # the EC analogue of RSA "n" bytes
        "jwk-x-string": jwk["x"].encode(),
    }


@pytest.mark.parametrize("encoding", ["pem", "jwk-json", "jwk-x-bytes", "jwk-x-string"])
def test_auth_04_hs256_keyed_with_the_as_public_key_is_refused(probe: Probe, encoding: str) -> None:
    secret = _as_public_key_encodings(probe)[encoding]
    header = {"typ": "at+jwt", "alg": "HS256", "kid": as_kid(probe)}
    claims = {**probe.claims(), "jti": uuid.uuid4().hex}
    refused(probe, factories.hs256_jws(header, claims, secret))


# --- AUTH-05 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "make_key"),
    [
        ("RS256", lambda: factories.rsa_key(2048)),
        ("PS256", lambda: factories.rsa_key(2048)),
        ("ES384", lambda: factories.ec_key("P-384")),
        ("EdDSA", factories.okp_key),
        ("ES256", factories.ec_key),  # the allowed alg, but not the AS's key
    ],
    ids=["RS256", "PS256", "ES384", "EdDSA", "ES256-foreign-key"],
)
def test_auth_05_token_signed_with_another_algorithm_or_key_is_refused(
    probe: Probe, alg: str, make_key: Any
) -> None:
    """The policy allows exactly what our AS signs (ES256 with its key); RS256 and friends are refused
    even when the ``kid`` names the AS's key."""
    refused(probe, probe.mint(header={"alg": alg}, key=make_key(), alg=alg))


# --- AUTH-06 ---------------------------------------------------------------------------------------


def test_auth_06_es256_token_from_the_real_as_is_accepted(probe: Probe) -> None:
    header, _ = jwt_parts(probe.token)
    assert header["alg"] == "ES256"
    jwks = probe.client.flask.get("/.well-known/openid-configuration/jwks").get_json()
    assert header["kid"] in {k["kid"] for k in jwks["keys"]}
    probe.assert_still_works()


# --- AUTH-05 / AUTH-06 with an external (HelseID-shaped) issuer that signs RSA ---------------------

HELSEID_AUDIENCE = "nhn:dho-share"


@pytest.fixture
def helseid_keys() -> dict[str, Key]:
    return {
        "RSA": RSAKey.generate_key(2048, parameters={"use": "sig"}, private=True, auto_kid=True),
        "EC": ECKey.generate_key("P-256", parameters={"use": "sig"}, private=True, auto_kid=True),
    }


@pytest.fixture
def helseid(
    request: pytest.FixtureRequest, settings: Settings, scene: Scene, helseid_keys: dict[str, Key]
) -> Iterator[tuple[IssuerServer, Probe]]:
    """A loopback issuer publishing an RSA and an EC key, trusted (with the allowlist given by the
    test's ``algorithms`` marker argument) by a second app on the same database; and a read probe
    pointed at that app."""
    algorithms = request.param
    server = IssuerServer()
    server.jwks = {"keys": [k.as_dict(private=False) for k in helseid_keys.values()]}
    trusted = TrustedIssuerSetting(issuer=server.url, audience=HELSEID_AUDIENCE, algorithms=algorithms)
    app = create_app(settings.model_copy(update={"trusted_issuers": (trusted,)}))
    api = copy.copy(scene.client)
    api.flask, api.services = app.test_client(), app.extensions["dho"]
    yield server, dataclasses.replace(scene.read, client=api, services=api.services)
    api.services.engine.dispose()
    server.stop()


def helseid_token(server: IssuerServer, probe: Probe, key: Key, alg: str) -> str:
    details = attestation(
        legal_entity=HOSPITAL, point_of_care=HOSPITAL_UNIT, patient=(FNR, probe.patient), hpr_number=HPR
    )
    return factories.make_helseid_token(
        key,
        kid=key.kid,
        alg=alg,
        jkt=probe.jkt,
        issuer=server.url,
        audience=HELSEID_AUDIENCE,
        now=time.time(),
        **{
            "helseid://claims/client/claims/orgnr_parent": HOSPITAL,
            "helseid://claims/client/claims/orgnr_child": HOSPITAL_UNIT,
            "authorization_details": [details],
        },
    )


@pytest.mark.parametrize("helseid", [("PS256", "ES256")], indirect=True)
@pytest.mark.parametrize(("alg", "kty"), [("PS256", "RSA"), ("ES256", "EC")])
def test_auth_06_ps256_and_es256_tokens_of_a_trusted_issuer_are_accepted(
    helseid: tuple[IssuerServer, Probe], helseid_keys: dict[str, Key], alg: str, kty: str
) -> None:
    server, probe = helseid
    response = probe.send_with(helseid_token(server, probe, helseid_keys[kty], alg))
    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.mark.parametrize("helseid", [("PS256", "ES256")], indirect=True)
@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS512"])
def test_auth_05_rsa_token_outside_the_issuers_allowlist_is_refused(
    helseid: tuple[IssuerServer, Probe], helseid_keys: dict[str, Key], alg: str
) -> None:
    """Signed by the key the issuer really publishes: only the algorithm is outside the policy."""
    server, probe = helseid
    before = probe.snapshot()
    response = probe.send_with(helseid_token(server, probe, helseid_keys["RSA"], alg))
    probe.assert_refused(response, error="invalid_token", before=before)
    assert probe.send_with(helseid_token(server, probe, helseid_keys["RSA"], "PS256")).status_code == 200


# --- AUTH-07 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typ",
    [None, "JWT", "jwt", "dpop+jwt", "client-authentication+jwt", "at+JWT+x", 1, ["at+jwt"]],
    ids=["absent", "JWT", "jwt", "dpop+jwt", "client-authentication+jwt", "suffixed", "number", "array"],
)
def test_auth_07_token_without_the_at_jwt_typ_is_refused(probe: Probe, typ: Any) -> None:
    token = probe.mint(drop_header=["typ"]) if typ is None else probe.mint(header={"typ": typ})
    refused(probe, token)


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt"])
def test_auth_07_control_rfc9068_typ_values_are_accepted(probe: Probe, typ: str) -> None:
    response = probe.send_with(probe.mint(header={"typ": typ}))
    assert response.status_code == (201 if probe.kind == "write" else 200)


# --- AUTH-08 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "https://evil.example.test"},
        {"iss": "https://dho.example.test/"},
        {"iss": "http://dho.example.test"},
        {"aud": "other-api"},
        {"aud": ["other-api"]},
        {"aud": ["other-api", "another-api"]},
        {"aud": []},
        {"aud": "https://dho.example.test"},
    ],
    ids=[
        "iss-other",
        "iss-trailing-slash",
        "iss-http",
        "aud-other-rs",
        "aud-array-without-us",
        "aud-array-two-others",
        "aud-empty-array",
        "aud-issuer-url",
    ],
)
def test_auth_08_wrong_issuer_or_audience_is_refused(probe: Probe, claims: dict[str, Any]) -> None:
    refused(probe, probe.mint(**claims))


def test_auth_08_missing_audience_is_refused(probe: Probe) -> None:
    refused(probe, probe.mint(drop=["aud"]))


# --- AUTH-09 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offsets",
    [
        {"exp": -60},
        {"exp": -11},
        {"exp": -3600, "iat": -3900, "nbf": -3900},
        {"nbf": 61},
        {"iat": 61},
        {"iat": 3600, "nbf": 3600, "exp": 3900},
    ],
    ids=[
        "exp-60s-past",
        "exp-just-beyond-leeway",
        "exp-1h-past",
        "nbf-61s-future",
        "iat-61s-future",
        "iat-1h-future",
    ],
)
def test_auth_09_token_outside_its_validity_window_is_refused(probe: Probe, offsets: dict[str, int]) -> None:
    now = int(time.time())
    refused(probe, probe.mint(**{name: now + delta for name, delta in offsets.items()}))


@pytest.mark.parametrize("claim", ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"])
def test_auth_09_token_missing_a_required_claim_is_refused(probe: Probe, claim: str) -> None:
    refused(probe, probe.mint(drop=[claim]))


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_auth_09_non_numeric_time_claims_are_refused(probe: Probe, claim: str) -> None:
    refused(probe, probe.mint(**{claim: str(int(time.time()))}))


# --- AUTH-10 ---------------------------------------------------------------------------------------


class ListeningSocket:
    """A loopback TCP listener that only counts connections: a verifier that fetches ``jku``/``x5u``
    would connect here."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/jwks.json"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[ListeningSocket]:
    server = ListeningSocket()
    yield server
    server.close()


@pytest.mark.parametrize(
    "kid",
    [
        "unknown-kid",
        "' OR 1=1 --",
        "'OR'1'='1",
        "x' UNION SELECT jwks FROM clients --",
        "../../../../etc/passwd",
        "/dev/null",
        "..%2F..%2Fetc%2Fpasswd",
        "kid\x00",
        "k" * 5000,
        "",
        123,
        None,
        ["kid"],
    ],
    ids=[
        "unknown",
        "sql-or",
        "sql-or-no-spaces",
        "sql-union",
        "path-traversal",
        "dev-null",
        "encoded-traversal",
        "nul-byte",
        "5000-chars",
        "empty",
        "number",
        "null",
        "array",
    ],
)
def test_auth_10_unknown_or_hostile_kid_is_refused_without_a_db_error(
    probe: Probe, kid: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("DEBUG"):
        refused(probe, probe.mint(header={"kid": kid}))
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


@pytest.mark.parametrize("param", ["jku", "x5u"])
def test_auth_10_key_url_header_is_refused_without_an_outbound_fetch(
    probe: Probe, param: str, listener: ListeningSocket
) -> None:
    refused(probe, probe.mint(header={param: listener.url}))
    time.sleep(0.2)  # a fetch would have connected by now
    assert listener.connections == 0


@pytest.mark.parametrize("suffix", ["", "/.well-known/openid-configuration"])
def test_auth_10_untrusted_issuer_url_in_iss_is_not_fetched(
    probe: Probe, listener: ListeningSocket, suffix: str
) -> None:
    """``iss`` is read before the signature is checked: naming a URL there must not make us fetch it."""
    issuer = listener.url.rsplit("/", 1)[0] + suffix
    refused(probe, probe.mint(iss=issuer))
    time.sleep(0.2)
    assert listener.connections == 0


def test_auth_10_embedded_jwk_header_is_refused(probe: Probe) -> None:
    """A token that carries its own key (``jwk``), signed by that key, under the AS's ``kid``."""
    attacker = factories.ec_key()
    refused(probe, probe.mint(header={"jwk": factories.public_jwk(attacker)}, key=attacker))


def test_auth_10_embedded_jwk_header_is_refused_even_when_the_as_key_signs(probe: Probe) -> None:
    attacker = factories.ec_key()
    refused(probe, probe.mint(header={"jwk": factories.public_jwk(attacker)}))


def test_auth_10_x5c_header_is_refused(probe: Probe) -> None:
    refused(probe, probe.mint(header={"x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]}))


# --- AUTH-11 ---------------------------------------------------------------------------------------


def _json_serialisations(token: str) -> dict[str, str]:
    header, payload, signature = token.split(".")
    flattened = {"protected": header, "payload": payload, "signature": signature}
    general = {"payload": payload, "signatures": [{"protected": header, "signature": signature}]}
    return {
        "jws-json-flattened": json.dumps(flattened, separators=(",", ":")),
        "jws-json-general": json.dumps(general, separators=(",", ":")),
    }


@pytest.mark.parametrize(
    "shape",
    [
        "jws-json-flattened",
        "jws-json-general",
        "standard-base64",
        "padded",
        "five-segment-jwe",
        "four-segments",
        "two-segments",
        "one-segment",
        "trailing-dot",
        "base64-of-token",
    ],
)
def test_auth_11_format_confusion_is_refused(probe: Probe, shape: str) -> None:
    token = probe.mint()
    header, payload, signature = token.split(".")
    jwe_header = b64url(json.dumps({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": as_kid(probe)}).encode())
    variants = {
        **_json_serialisations(token),
        # the same bytes in standard base64 (RFC 4648 §4), where the token has '-' or '_'
        "standard-base64": ".".join(
            base64.b64encode(b64url_decode(s)).decode().rstrip("=") + "+/"
            for s in (header, payload, signature)
        ),
        "padded": f"{header}.{payload}.{signature}{'=' * (-len(signature) % 4) or '=='}",
        "five-segment-jwe": ".".join(
            (jwe_header, b64url(b"k" * 256), b64url(b"i" * 12), payload, b64url(b"t" * 16))
        ),
        "four-segments": f"{token}.{signature}",
        "two-segments": f"{header}.{payload}",
        "one-segment": payload,
        "trailing-dot": f"{token}.",
        "base64-of-token": b64url(token.encode()),
    }
    refused(probe, variants[shape])


# --- AUTH-12 ---------------------------------------------------------------------------------------


def _flip_bit(segment: str, at: int) -> str:
    raw = bytearray(b64url_decode(segment))
    raw[at] ^= 0x01
    return b64url(bytes(raw))


def _tampered(token: str, part: str) -> str:
    """``token`` with one bit flipped in ``part``, the rest (and the signature) as signed."""
    header, payload, signature = token.split(".")
    if part == "signature":
        return f"{header}.{payload}.{_flip_bit(signature, 10)}"
    if part == "header":
        at = b64url_decode(header).index(b'"ES256"') + 3  # ES256 -> ES356
        return f"{_flip_bit(header, at)}.{payload}.{signature}"
    marker = {
        "client_id": b'"client_id": "',
        "scope": b'"scope": "',
        "sub": b'"sub": "',
        "patient": b'"patients": [{"identifier": {"id": "',
    }[part]
    at = b64url_decode(payload).index(marker) + len(marker)
    return f"{header}.{_flip_bit(payload, at)}.{signature}"


@pytest.mark.parametrize("part", ["client_id", "scope", "sub", "header", "signature"])
def test_auth_12_one_flipped_bit_breaks_the_signature(probe: Probe, part: str) -> None:
    refused(probe, _tampered(probe.mint(), part))


def test_auth_12_flipped_bit_in_the_attested_patient_is_refused(reader: Probe) -> None:
    """Tampering the attestation's patient number (to read someone else) breaks the signature."""
    refused(reader, _tampered(reader.mint(), "patient"))


# --- AUTH-13 ---------------------------------------------------------------------------------------


def assertion_form(client: ApiClient, party: str, **extra: str) -> dict[str, str]:
    """Client authentication (private_key_jwt) for ``party`` at the token service's endpoints."""
    who = client.parties[party]
    return {
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(who.key, client_id=who.client_id, issuer=client.issuer),
        **extra,
    }


def test_auth_13_revoked_token_is_refused_at_once(scene: Scene) -> None:
    reader, client = scene.read, scene.client
    assert reader.send(reader.headers()).status_code == 200
    revoked = client.flask.post(REVOCATION_PATH, data=assertion_form(client, "hospital", token=reader.token))
    assert revoked.status_code == 200
    # Staleness with Redis is zero: the very next request is refused.
    before = reader.snapshot()
    reader.assert_refused(reader.send(reader.headers()), error="invalid_token", before=before)
    introspected = client.flask.post(
        INTROSPECTION_PATH, data=assertion_form(client, "hospital", token=reader.token)
    )
    assert introspected.get_json() == {"active": False}
    # Sanity: a new token of the same client, same pattern, works.
    fresh = client.token_response(client.parties["hospital"], patient=(FNR, reader.patient))
    assert fresh.status_code == 200
    assert reader.send_with(fresh.get_json()["access_token"]).status_code == 200


# --- AUTH-14 ---------------------------------------------------------------------------------------


def test_auth_14_read_scope_on_a_write_is_insufficient_scope(scene: Scene) -> None:
    write = scene.write
    before = write.snapshot()
    response = write.send(write.headers(scene.read.token))  # observation.read token, POST create
    write.assert_refused(response, status=403, error="insufficient_scope", before=before)
    assert challenge_params(response)["scope"] == "dho-share/observation.write"
    write.assert_still_works()


def test_auth_14_read_scope_on_an_update_is_insufficient_scope(scene: Scene) -> None:
    path = f"{scene.read.path}"
    token = scene.read.token
    proof = scene.write.proof(token, method="PUT", url=scene.client.public + path)
    body = scene.write.fresh_body()
    before = scene.write.snapshot()
    response = scene.write.send(
        {"Authorization": f"DPoP {token}", "DPoP": proof}, path=path, method="PUT", json=body
    )
    scene.write.assert_refused(response, status=403, error="insufficient_scope", before=before)
    assert scene.read.send(scene.read.headers()).get_json()["meta"]["versionId"] == "1"


def test_auth_14_write_scope_on_a_read_is_insufficient_scope(scene: Scene) -> None:
    reader = scene.read
    before = reader.snapshot()
    response = reader.send(reader.headers(scene.write.token))
    reader.assert_refused(response, status=403, error="insufficient_scope", before=before)
    reader.assert_still_works()


def test_auth_14_token_without_any_scope_is_refused(probe: Probe) -> None:
    before = probe.snapshot()
    response = probe.send_with(probe.mint(drop=["scope"]))
    probe.assert_refused(response, status=403, error="insufficient_scope", before=before)
    probe.assert_still_works()


# --- AUTH-15 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["JWT", None])
def test_auth_15_id_token_of_the_same_as_is_refused(probe: Probe, typ: str | None) -> None:
    """An OpenID Connect ID token (aud = the client, nonce, auth_time, no scope or cnf), signed by the
    AS's own key."""
    keyset = probe.services.token_service.keyset
    claims = probe.claims()
    now = int(time.time())
    id_claims = {
        "iss": claims["iss"],
        "sub": claims["sub"],
        "aud": claims["client_id"],
        "azp": claims["client_id"],
        "exp": now + 300,
        "iat": now,
        "auth_time": now,
        "nonce": uuid.uuid4().hex,
        "jti": uuid.uuid4().hex,
    }
    header = {"alg": "ES256", "kid": keyset.kid, **({"typ": typ} if typ else {})}
    refused(probe, factories.sign(header, id_claims, keyset.active))


# --- AUTH-16 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("second", ["same", "forged", "bearer"])
def test_auth_16_duplicate_authorization_headers_are_refused(probe: Probe, second: str) -> None:
    other = {
        "same": f"DPoP {probe.token}",
        "forged": f"DPoP {probe.mint(aud='x')}",
        "bearer": f"Bearer {probe.token}",
    }
    before = probe.snapshot()
    headers = [
        ("Authorization", f"DPoP {probe.token}"),
        ("Authorization", other[second]),
        ("DPoP", probe.proof()),
    ]
    probe.assert_refused(probe.send(headers), status=401, before=before)
    probe.assert_still_works()


# --- AUTH-17 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size"),
    [("Authorization", 10 * 1024 * 1024), ("Authorization", 64 * 1024), ("DPoP", 64 * 1024)],
    ids=["token-10MB", "token-64KB", "proof-64KB"],
)
def test_auth_17_oversized_token_or_proof_is_refused_without_a_500(
    probe: Probe, header: str, size: int
) -> None:
    header_segment, payload, _ = probe.token.split(".")
    huge = f"{header_segment}.{payload}.{'A' * size}"
    headers = probe.headers()
    headers[header] = f"DPoP {huge}" if header == "Authorization" else huge
    before = probe.snapshot()
    response = probe.send(headers)
    assert response.status_code in (401, 413, 431)
    probe.assert_refused(response, status=(401, 413, 431), before=before)
    assert len(response.get_data()) < 4096  # the refusal does not echo the input
    probe.assert_still_works()


def test_auth_17_decoding_cost_is_bounded_for_a_64kb_header_segment(probe: Probe) -> None:
    """A huge *header* segment (not just signature) is refused on length before any JSON is parsed."""
    header = b64url(
        json.dumps({"typ": "at+jwt", "alg": "ES256", "kid": as_kid(probe), "p": "x" * 48_000}).encode()
    )
    _, payload, signature = probe.mint().split(".")
    refused(probe, f"{header}.{payload}.{signature}")


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS)
def test_auth_17_the_server_refuses_oversized_headers_without_a_500(
    server: str, client: ApiClient, settings: Settings, tmp_path: Path
) -> None:
    """In production the HTTP server parses headers first: granian's 16 KiB for all of them
    (``serving.HEADER_BYTES``), gunicorn's 8190 bytes a field, answer 431 before the app sees the
    request. Either 431/413/401 or a closed connection is acceptable; a 500 is not."""
    env = server_env(settings)
    publisher = client.parties[f"publisher-{TENANT_A}"]
    with live_server(env, workers=2, log=tmp_path / "server.log", options=("--server", server)) as base:
        url = f"{base}/{TENANT_A}/fhir/Observation"
        http = DhoClient(issuer=base, client_id=publisher.client_id, client_key=publisher.key, scope=WRITE)
        token = http.access_token()
        for name, size in (
            ("Authorization", 10 * 1024 * 1024),
            ("Authorization", 64 * 1024),
            ("DPoP", 64 * 1024),
        ):
            headers = {"Authorization": f"DPoP {token}", "DPoP": "x"}
            headers[name] = ("DPoP " if name == "Authorization" else "") + "A" * size
            try:
                response = requests.post(url, json={}, headers=headers, timeout=30)
            except requests.ConnectionError:
                continue  # the server closed the connection while a 10 MB header was still being sent
            assert response.status_code in (401, 413, 431), (name, size, response.status_code)
        created = http.request("POST", url, json=heart_rate(fnr(), value=70))
        assert created.status_code == 201
