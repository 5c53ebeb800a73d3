"""A test client that calls the API the way a real client system does: token endpoint, then DPoP.

Every request gets a fresh DPoP proof for its method and URL, with an access token obtained from the
app's own token endpoint (client assertion + proof), cached per party and patient. Writes go out as
the tenant's own publishing system; reads as a hospital's system whose token carries an attestation
for the patient being read. Tests that probe authentication itself pass ``headers`` of their own and
``auth=False``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from flask.testing import FlaskClient
from joserfc.jwk import ECKey
from werkzeug.test import TestResponse

from auth.client import ASSERTION_TYPE, attestation, client_assertion, dpop_proof
from auth.server import TOKEN_PATH
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services

HOSPITAL = "974760673"
HOSPITAL_UNIT = "987654325"
OTHER_HOSPITAL = "911222337"
HPR = "1234567"
READ = "dho-share/observation.read"
WRITE = "dho-share/observation.write"
PATIENT_PARAMS = ("patient.identifier", "subject:identifier", "patient:identifier")


@dataclass
class Party:
    """A registered client system: its id, organisation, signing key and scopes."""

    client_id: str
    orgnr: str
    scopes: frozenset[str]
    point_of_care: str | None = None
    hpr: str | None = HPR
    pid: str | None = None
    """The health worker's national identity number in the attestation (``practitioner.identifier``)."""
    key: ECKey = field(default_factory=lambda: ECKey.generate_key("P-256", private=True))

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}


class ApiClient:
    """Wraps a Flask test client; ``get``/``post``/``put`` behave like its own, plus authentication."""

    def __init__(self, flask: FlaskClient, services: Services):
        self.flask = flask
        self.services = services
        self.public = services.settings.base_url
        self.issuer = services.settings.issuer_url
        self.parties: dict[str, Party] = {}
        self.dpop_key = ECKey.generate_key("P-256", private=True)
        self._tokens: dict[tuple[str, tuple[str, str] | None, str], tuple[str, float]] = {}
        self.last_patient: tuple[str, str] | None = None
        self.add_party(Party("hospital", HOSPITAL, frozenset({READ}), point_of_care=HOSPITAL_UNIT))
        self.add_party(
            Party("other-hospital", OTHER_HOSPITAL, frozenset({READ}), point_of_care=OTHER_HOSPITAL)
        )
        for tenant in services.tenants.all():
            self.add_party(Party(f"publisher-{tenant.orgnr}", tenant.orgnr, frozenset({WRITE}), hpr=None))

    def add_party(self, party: Party) -> Party:
        self.services.clients.add(
            party.client_id,
            orgnr=party.orgnr,
            jwks=party.jwks(),
            scopes=party.scopes,
            point_of_care=party.point_of_care,
        )
        self.parties[party.client_id] = party
        return party

    # -- tokens ---------------------------------------------------------------------------------

    def token_response(
        self,
        party: Party,
        *,
        patient: tuple[str, str] | None = None,
        purpose: str = "TREAT",
        scope: str | None = None,
    ) -> TestResponse:
        details = None
        if patient is not None or party.hpr is not None:
            details = attestation(
                legal_entity=party.orgnr,
                point_of_care=party.point_of_care or party.orgnr,
                patient=patient,
                hpr_number=party.hpr,
                practitioner_pid=party.pid,
                purpose_of_use=purpose,
            )
        form = {
            "grant_type": "client_credentials",
            "scope": scope or " ".join(sorted(party.scopes)),
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(
                party.key, client_id=party.client_id, issuer=self.issuer, assertion_details=details
            ),
        }
        proof = dpop_proof(self.dpop_key, method="POST", url=self.issuer + TOKEN_PATH)
        return self.flask.post(TOKEN_PATH, data=form, headers={"DPoP": proof})

    def token(self, party: Party, patient: tuple[str, str] | None = None, purpose: str = "TREAT") -> str:
        """A cached token, renewed 30 s (or half its lifetime) before it expires, as ``DhoClient``
        does, so that a long test on a slow machine never sends an expired one."""
        key = (party.client_id, patient, purpose)
        cached = self._tokens.get(key)
        if cached is None or time.monotonic() >= cached[1]:
            response = self.token_response(party, patient=patient, purpose=purpose)
            assert response.status_code == 200, response.get_json()
            body = response.get_json()
            lifetime = body["expires_in"]
            cached = (body["access_token"], time.monotonic() + lifetime - min(30, lifetime / 2))
            self._tokens[key] = cached
        return cached[0]

    def auth_headers(self, method: str, path: str, token: str) -> dict[str, str]:
        url = self.public + urlsplit(path).path
        return {
            "Authorization": f"DPoP {token}",
            "DPoP": dpop_proof(self.dpop_key, method=method, url=url, access_token=token),
        }

    # -- requests -------------------------------------------------------------------------------

    def _is_write(self, method: str, path: str) -> bool:
        parts = urlsplit(path).path.rstrip("/").split("/")
        return method == "PUT" or (method == "POST" and len(parts) in (3, 4) and parts[2] == "fhir")

    def _patient_of(self, method: str, path: str, kwargs: dict[str, Any]) -> tuple[str, str] | None:
        pairs: list[tuple[str, str]] = list(parse_qsl(urlsplit(path).query))
        data = kwargs.get("data")
        if isinstance(data, dict):
            pairs += [(k, v) for k, vs in data.items() for v in (vs if isinstance(vs, list) else [vs])]
        elif isinstance(data, str):
            pairs += parse_qsl(data)
        for name, value in pairs:
            if name in PATIENT_PARAMS and "|" in value and "," not in value:
                system, number = value.split("|", 1)
                return (system or FNR, number)
        parts = urlsplit(path).path.split("/")
        if (
            method == "GET"
            and len(parts) >= 5
            and parts[3] == "Observation"
            and not parts[4].startswith(("$", "_"))
        ):
            stored = self.services.observations.read(parts[1], parts[4])
            if stored is not None:
                return stored.patient
        return self.last_patient

    def open(
        self,
        method: str,
        path: str,
        *,
        party: str | None = None,
        patient: tuple[str, str] | str | None = None,
        purpose: str = "TREAT",
        auth: bool = True,
        **kwargs: Any,
    ) -> TestResponse:
        headers = dict(kwargs.pop("headers", None) or {})
        if auth:
            if self._is_write(method, path):
                who = self.parties[party or f"publisher-{path.split('/')[1]}"]
                token = self.token(who)
            else:
                who = self.parties[party or "hospital"]
                bound = (
                    (FNR, patient)
                    if isinstance(patient, str)
                    else patient or self._patient_of(method, path, kwargs)
                )
                self.last_patient = bound
                token = self.token(who, bound, purpose)
            headers = {**self.auth_headers(method, path, token), **headers}
        return self.flask.open(path, method=method, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.open("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> TestResponse:
        return self.open("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> TestResponse:
        return self.open("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> TestResponse:
        return self.open("DELETE", path, **kwargs)
