"""``Caller``: who is asking, carried through one request from the token to consent and audit.

Built only from the claims of a **verified** access token (:func:`auth.tokens.verify_access_token`), by
:func:`caller_from_claims`. Where the token says who the organisation is:

* ``organisation`` (legal entity) is ``helseid://claims/client/claims/orgnr_parent``, which the token
  service derives from the client's registration, falling back to the attestation's ``legal_entity``;
  if both are present they must agree (a client may not attest for another organisation);
* ``point_of_care`` is the attestation's ``point_of_care`` (the practitioner's workplace), falling back
  to ``helseid://claims/client/claims/orgnr_child``;
* ``practitioner_hpr`` is ``helseid://claims/hpr/hpr_number``, else the attestation's ``hpr_nr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from auth.attestation import Attestation, PurposeOfUse, attestation_from_model, find_attestation
from auth.errors import InvalidAuthorizationDetails, InvalidToken
from auth.tokens import (
    CLAIM_HPR_NUMBER,
    CLAIM_ORGNR_CHILD,
    CLAIM_ORGNR_PARENT,
    CLAIM_PID,
    CLAIM_SECURITY_LEVEL,
    parse_scope,
)

__all__ = ["Caller", "caller_from_claims"]


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated party behind one request.

    National identity numbers (``pid``, ``patient_ids``) and the attestation are kept out of ``repr``
    so that logging a ``Caller`` leaks no PHI.
    """

    client_id: str
    issuer: str
    token_jti: str
    scopes: frozenset[str]
    organisation: str | None = None
    point_of_care: str | None = None
    practitioner_hpr: str | None = None
    purpose_of_use: PurposeOfUse | None = None
    patient_ids: tuple[str, ...] = field(default=(), repr=False)
    attestation: Attestation | None = field(default=None, repr=False)
    pid: str | None = field(default=None, repr=False)
    security_level: str | None = None
    subject: str | None = None
    jkt: str | None = None

    @property
    def patient(self) -> str | None:
        """The patient this caller's attestation is bound to, if it names exactly one."""
        return self.patient_ids[0] if len(self.patient_ids) == 1 else None

    @property
    def is_person(self) -> bool:
        """A health worker (``pid``) is behind the call, not only a system."""
        return self.pid is not None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def _opt_str(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and value else None


def caller_from_claims(claims: Mapping[str, Any]) -> Caller:
    """The :class:`Caller` for a verified token's claims.

    :raise InvalidToken: a claim ``verify_access_token`` guarantees is missing (not a verified token).
    :raise InvalidAuthorizationDetails: the attestation is malformed, or names another legal entity
        than the token's ``orgnr_parent``.
    """
    client_id, issuer, jti = (claims.get(name) for name in ("client_id", "iss", "jti"))
    if not (isinstance(client_id, str) and isinstance(issuer, str) and isinstance(jti, str)):
        raise InvalidToken("claims are not those of a verified access token")

    attestation = None
    attestation_path = "authorization_details"
    details = claims.get("authorization_details")
    if details is not None:
        found = find_attestation(details)
        if found is not None:
            entry, attestation_path = found
            attestation = attestation_from_model(entry, attestation_path)

    orgnr_parent = _opt_str(claims, CLAIM_ORGNR_PARENT)
    organisation = orgnr_parent
    point_of_care = _opt_str(claims, CLAIM_ORGNR_CHILD)
    hpr = _opt_str(claims, CLAIM_HPR_NUMBER)
    purpose = None
    patient_ids: tuple[str, ...] = ()
    if attestation is not None:
        legal_entity = attestation.legal_entity.id
        if orgnr_parent is not None and orgnr_parent != legal_entity:
            raise InvalidAuthorizationDetails(
                "legal entity differs from the token's organisation",
                path=f"{attestation_path}.practitioner.legal_entity.id",
            )
        organisation = legal_entity
        point_of_care = attestation.point_of_care.id
        hpr = hpr or attestation.practitioner_hpr
        purpose = attestation.purpose_of_use
        patient_ids = attestation.patient_ids

    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) and isinstance(cnf.get("jkt"), str) else None
    return Caller(
        client_id=client_id,
        issuer=issuer,
        token_jti=jti,
        scopes=parse_scope(claims.get("scope")),
        organisation=organisation,
        point_of_care=point_of_care,
        practitioner_hpr=hpr,
        purpose_of_use=purpose,
        patient_ids=patient_ids,
        attestation=attestation,
        pid=_opt_str(claims, CLAIM_PID),
        security_level=_opt_str(claims, CLAIM_SECURITY_LEVEL),
        subject=_opt_str(claims, "sub"),
        jkt=jkt,
    )
