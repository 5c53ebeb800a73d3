"""The benchmark's client systems: a publisher for the tenant and a hospital with an agreement.

Every measured request carries a DPoP-bound token from the server's own token service and a fresh
DPoP proof (proofs are single-use, so they are signed before the clock starts: one per request).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlencode

import click
from joserfc.jwk import ECKey

from auth.client import ASSERTION_TYPE, DhoClient, attestation, client_assertion, dpop_proof
from benchmarks.load import Connection, count_created, request_bytes
from consent.model import PurposeOfUse
from sharing_api.fhir.identifiers import FNR
from sharing_api.store.clients import ClientRegistry
from sharing_api.store.engine import make_engine
from sharing_api.store.policy import PolicyStore

PUBLISHER = "bench-publisher"
HOSPITAL = "bench-hospital"
HOSPITAL_ORG, HOSPITAL_UNIT, HPR = "974760673", "987654325", "1234567"
AGREEMENT_CATEGORIES = frozenset({"vital-signs", "survey"})
AGREEMENT_START = datetime(2020, 1, 1, tzinfo=UTC)


def register(database_url: str, tenant: str) -> dict[str, ECKey]:
    """Register both clients with fresh keys, and an agreement tenant -> hospital."""
    engine = make_engine(database_url)
    keys = {name: ECKey.generate_key("P-256", private=True) for name in (PUBLISHER, HOSPITAL)}
    registry = ClientRegistry(engine)
    registry.add(
        PUBLISHER,
        orgnr=tenant,
        jwks={"keys": [keys[PUBLISHER].as_dict(private=False)]},
        scopes=frozenset({"dho-share/observation.write"}),
    )
    registry.add(
        HOSPITAL,
        orgnr=HOSPITAL_ORG,
        jwks={"keys": [keys[HOSPITAL].as_dict(private=False)]},
        scopes=frozenset({"dho-share/observation.read"}),
        point_of_care=HOSPITAL_UNIT,
    )
    PolicyStore(engine, lambda: int(time.time() * 1e6)).add_agreement(
        controller=tenant,
        consumer=HOSPITAL_ORG,
        categories=AGREEMENT_CATEGORIES,
        purposes=frozenset({PurposeOfUse.TREAT}),
        valid_from=AGREEMENT_START,
    )
    engine.dispose()
    return keys


FORM_URLENCODED = "application/x-www-form-urlencoded"
FHIR_JSON = "application/fhir+json"


class Credentials:
    """Tokens from the server under test, and proof headers for one request each."""

    def __init__(self, base: str, keys: dict[str, ECKey]):
        self.base = base
        self.keys = keys
        self.publisher = DhoClient(
            issuer=base, client_id=PUBLISHER, client_key=keys[PUBLISHER], scope="dho-share/observation.write"
        )
        self._readers: dict[str, DhoClient] = {}

    def reader(self, fnr: str) -> DhoClient:
        """The hospital's doctor, with an attestation for this patient."""
        if fnr not in self._readers:
            self._readers[fnr] = DhoClient(
                issuer=self.base,
                client_id=HOSPITAL,
                client_key=self.keys[HOSPITAL],
                scope="dho-share/observation.read",
                attestation=attestation(
                    legal_entity=HOSPITAL_ORG, point_of_care=HOSPITAL_UNIT, patient=(FNR, fnr), hpr_number=HPR
                ),
            )
        return self._readers[fnr]

    @staticmethod
    def headers(client: DhoClient, method: str, url: str) -> list[str]:
        token = client.access_token()
        proof = dpop_proof(client.dpop_key, method=method, url=url, access_token=token)
        return [f"Authorization: DPoP {token}", f"DPoP: {proof}"]

    def token_request(self, client: DhoClient, endpoint: str) -> tuple[bytes, list[str]]:
        """A token request as ``client`` sends it: a fresh client assertion and DPoP proof."""
        form = {
            "grant_type": "client_credentials",
            "scope": client.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(
                client.client_key,
                client_id=client.client_id,
                issuer=client.issuer,
                assertion_details=client.attestation,
            ),
        }
        proof = dpop_proof(client.dpop_key, method="POST", url=endpoint)
        return urlencode(form).encode(), [f"DPoP: {proof}"]

    def search_headers(self, form: bytes, url: str) -> list[str]:
        return self.headers(self.reader(form_patient(form)), "POST", url)

    def search_request(self, port: int, path: str, form: bytes) -> bytes:
        """``POST path`` with a search ``form``, by the doctor attested for its patient (a fresh proof)."""
        headers = self.search_headers(form, self.base + path)
        return request_bytes("POST", path, port, form, FORM_URLENCODED, headers)

    def bundle_request(self, port: int, path: str, body: bytes) -> bytes:
        """``POST path`` with a Bundle (or an Observation), by the publisher (a fresh proof)."""
        headers = self.headers(self.publisher, "POST", self.base + path)
        return request_bytes("POST", path, port, body, FHIR_JSON, headers)

    def read_request(self, port: int, path: str, fnr: str) -> bytes:
        """``GET path`` by the doctor attested for patient ``fnr`` (a fresh proof)."""
        headers = self.headers(self.reader(fnr), "GET", self.base + path)
        return request_bytes("GET", path, port, headers=headers)


def publish_all(conn: Connection, creds: Credentials, path: str, bundles: Sequence[bytes]) -> None:
    """POST each Bundle to ``path`` over ``conn``, one at a time; stop at one that created nothing."""
    for body in bundles:
        status, answer = conn.roundtrip(creds.bundle_request(conn.port, path, body))
        if status != 200 or count_created(answer) == 0:
            raise click.ClickException(f"ingest answered {status}")


def form_patient(form: bytes) -> str:
    """The national identity number a search form names (``patient.identifier=system|value``)."""
    return parse_qs(form.decode())["patient.identifier"][0].split("|", 1)[1]
