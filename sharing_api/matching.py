"""Opaque patient ids for standard FHIR clients (``Patient/$match``), so no identity number goes in a URL.

fhirpy and fhirclient search with ``GET``; a national identity number never goes in a URL (domain.md).
``POST [base]/Patient/$match`` (or ``POST Patient/_search`` with ``identifier`` in a form body) takes
the identifier in the body and answers a Patient whose ``id`` is 128 random bits naming a record in the
search-session store (the same store and lifetime as paging cursors). The id works only for the
requester (client system, organisation, health worker) and the attested patient it was made for, in
the tenant it was made in, until it expires; anywhere else it names nobody. The id carries no
information: it cannot be forged, edited or reversed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sharing_api.fhir.search import Token
from sharing_api.sessions import SearchSessions

KIND = "patient-match"
NOBODY = "urn:dho-share:unknown-patient"
"""The system of the token an unknown id resolves to: it matches no stored Observation."""


@dataclass(frozen=True, slots=True)
class MatchBinding:
    """Who an opaque patient id is for: the tenant, the requester and the attested patient."""

    tenant: str
    requester: str
    attested: tuple[str, str]


class PatientMatches:
    """Binds patient identifiers to opaque ids and resolves them for the same binding only."""

    def __init__(self, sessions: SearchSessions):
        self.sessions = sessions

    def bind(self, binding: MatchBinding, patient: tuple[str, str]) -> str:
        return self.sessions.put(
            {
                "kind": KIND,
                "tenant": binding.tenant,
                "requester": binding.requester,
                "attested": list(binding.attested),
                "patient": list(patient),
            }
        )

    def resolve(self, binding: MatchBinding, patient_id: str) -> tuple[str, str] | None:
        """The patient ``patient_id`` names for ``binding``; ``None`` when unknown, expired or bound to
        another tenant, requester or attestation (all indistinguishable)."""
        record = self.sessions.get(patient_id) if 0 < len(patient_id) <= 64 else None
        if (
            record is None
            or record.get("kind") != KIND
            or record.get("tenant") != binding.tenant
            or record.get("requester") != binding.requester
            or record.get("attested") != list(binding.attested)
        ):
            return None
        system, value = record["patient"]
        return str(system), str(value)

    def token(self, binding: MatchBinding, patient_id: str) -> Token:
        """A search token for ``patient_id``: the patient's identifier, or one that matches nobody."""
        found = self.resolve(binding, patient_id)
        return Token(NOBODY, "none") if found is None else Token(*found)
