"""Norwegian identifier systems and their control digits (domain.md, "Identifiers").

Pure functions over strings; the validation layer turns a ``False`` into an ``OperationOutcome``.
"""

from __future__ import annotations

import random
from datetime import date
from operator import mul

FNR = "urn:oid:2.16.578.1.12.4.1.4.1"
DNR = "urn:oid:2.16.578.1.12.4.1.4.2"
FHN = "urn:oid:2.16.578.1.12.4.1.4.3"
HPR = "urn:oid:2.16.578.1.12.4.1.4.4"
ORGNR = "urn:oid:2.16.578.1.12.4.1.4.101"
RESH = "urn:oid:2.16.578.1.12.4.1.4.102"

PATIENT_SYSTEMS = frozenset({FNR, DNR, FHN})
"""Subject identifier systems allowed by ``VkpSubjectIdentifiersValueSet``."""
PERFORMER_PERSON_SYSTEMS = frozenset({FNR, DNR, HPR})
"""Author slice: FNR per the IG's value set; DNR and HPR as domain.md allows (the person who measured)."""
PERFORMER_ORGANISATION_SYSTEMS = frozenset({ORGNR, RESH})
"""Organisation slice: ``VkpPerformerOrganizationIdentifiersValueSet``."""

_NIN_W1 = (3, 7, 6, 1, 8, 9, 4, 5, 2)
_NIN_W2 = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)
_ORG_W = (3, 2, 7, 6, 5, 4, 3, 2)


def _mod11(digits: str, weights: tuple[int, ...]) -> int | None:
    """The mod-11 control digit for ``digits``; ``None`` when the remainder makes no valid digit."""
    if len(digits) != len(weights):
        raise ValueError(f"{len(digits)} digits for {len(weights)} weights")
    rest = 11 - sum(map(mul, map(int, digits), weights)) % 11
    if rest == 11:
        return 0
    return None if rest == 10 else rest


def _has_valid_nin_control_digits(value: str) -> bool:
    if len(value) != 11 or not value.isascii() or not value.isdigit():
        return False
    return _mod11(value[:9], _NIN_W1) == int(value[9]) and _mod11(value[:10], _NIN_W2) == int(value[10])


def _plausible_birth_date(day: int, month: int) -> bool:
    # Synthetic test persons have month + 80 (and Skatteetaten's test numbers month + 40); the control
    # digits are what matter, the date only has to exist in some year.
    for offset in (0, 40, 80):
        if 1 <= month - offset <= 12:
            try:
                date(2000, month - offset, day)  # 2000 is a leap year: 29 February is allowed
            except ValueError:
                return False
            return True
    return False


def is_valid_fnr(value: str) -> bool:
    """Fødselsnummer: 11 digits, a real day/month (synthetic month + 80 allowed), two mod-11 digits."""
    if not _has_valid_nin_control_digits(value):
        return False
    return _plausible_birth_date(int(value[0:2]), int(value[2:4]))


def is_valid_dnr(value: str) -> bool:
    """D-nummer: as FNR with day + 40."""
    if not _has_valid_nin_control_digits(value):
        return False
    day = int(value[0:2])
    return day > 40 and _plausible_birth_date(day - 40, int(value[2:4]))


def is_valid_orgnr(value: str) -> bool:
    """Organisasjonsnummer: 9 digits, mod-11 control digit with weights 3,2,7,6,5,4,3,2."""
    if len(value) != 9 or not value.isascii() or not value.isdigit():
        return False
    return _mod11(value[:8], _ORG_W) == int(value[8])


def is_valid_hpr(value: str) -> bool:
    """HPR-nummer: 1-9 ASCII digits (Helsepersonellregisteret numbers carry no control digit)."""
    return value.isascii() and value.isdigit() and 1 <= len(value) <= 9


def check_patient_identifier(system: str, value: str) -> str | None:
    """``None`` when ``value`` is well-formed for ``system``, else what is wrong, in words."""
    if system == FNR:
        return None if is_valid_fnr(value) else "is not a valid fødselsnummer (11 digits, control digits)"
    if system == DNR:
        return None if is_valid_dnr(value) else "is not a valid D-nummer (11 digits, control digits)"
    if system == FHN:
        ok = value.isascii() and value.isdigit() and 1 <= len(value) <= 11
        return None if ok else "is not a valid felles hjelpenummer (digits only)"
    return "has an identifier system that is not FNR, DNR or FHN"


def synthetic_fnr(rng: random.Random) -> str:
    """A synthetic fødselsnummer (month + 80), never a number that can belong to a real person."""
    while True:
        born = date(1930, 1, 1).toordinal() + rng.randrange(0, 90 * 365)
        d = date.fromordinal(born)
        individual = rng.randrange(0, 500) if d.year < 2000 else rng.randrange(500, 1000)
        head = f"{d.day:02d}{d.month + 80:02d}{d.year % 100:02d}{individual:03d}"
        k1 = _mod11(head, _NIN_W1)
        if k1 is None:
            continue
        k2 = _mod11(head + str(k1), _NIN_W2)
        if k2 is None:
            continue
        return f"{head}{k1}{k2}"


def synthetic_orgnr(rng: random.Random) -> str:
    """A 9-digit number with a valid control digit (starting with 9, like most Norwegian org.nr)."""
    while True:
        head = "9" + "".join(str(rng.randrange(10)) for _ in range(7))
        k = _mod11(head, _ORG_W)
        if k is not None:
            return head + str(k)
