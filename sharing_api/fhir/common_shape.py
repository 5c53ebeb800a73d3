"""The common VKP Observation shape, recognised by hand: a fast way to say "structurally valid FHIR R4".

:func:`plainly_valid` answers ``True`` only for an Observation made of the elements VKP publishers
send (identifier, status, category, code, subject and performer by identifier, effectiveDateTime,
valueQuantity, component, note, meta with profile/versionId/lastUpdated/source, id), each of a form
that FHIR R4's structure (``fhir.resources`` R4B) certainly accepts: non-empty strings without
surrounding whitespace, codes and URIs of visible ASCII, finite numbers, complete dates and times.
Anything else, including every invalid input, answers ``False`` and is validated by the model, which
also writes the error messages; so the fast path can only skip work, never change an answer.
``tests/fhir/test_common_shape.py`` runs both over the reference examples, the project's examples and
generated mutations of them and asserts the same outcome.

The VKP profile rules (``fhir.validation``) run on every Observation either way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

_VISIBLE_ASCII = re.compile(r"[!-~]+")
"""FHIR ``code`` (``[^\\s]+(\\s[^\\s]+)*``) and ``uri`` (``\\S*``) values, kept to visible ASCII."""
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_DATE = re.compile(r"[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])")
_DATE_TIME = re.compile(
    r"[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])"
)
"""A complete date and time with a zone, no leap second, at most microseconds: inside both FHIR's
``dateTime``/``instant`` patterns and what Python (and pydantic) parse as a datetime."""
_MAX_NUMBER = 2**53


def _string(value: Any) -> bool:
    return (
        type(value) is str
        and 0 < len(value) <= 4096
        and value.isprintable()
        and not value[0].isspace()
        and not value[-1].isspace()
    )


def _code(value: Any) -> bool:
    return type(value) is str and len(value) <= 4096 and _VISIBLE_ASCII.fullmatch(value) is not None


_uri = _code


def _number(value: Any) -> bool:
    if type(value) is int:
        return -_MAX_NUMBER < value < _MAX_NUMBER
    return type(value) is float and math.isfinite(value) and -_MAX_NUMBER < value < _MAX_NUMBER


def _date_time(value: Any) -> bool:
    if type(value) is not str:
        return False
    if _DATE.fullmatch(value):
        try:
            date.fromisoformat(value)
        except ValueError:
            return False
        return True
    return _instant(value)


def _instant(value: Any) -> bool:
    if type(value) is not str or not _DATE_TIME.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value)  # a real day of its month
    except ValueError:
        return False
    return True


def _object(value: Any, fields: dict[str, Callable[[Any], bool]], required: tuple[str, ...] = ()) -> bool:
    """A JSON object of only ``fields``, each valid, none null or empty, the ``required`` ones present."""
    if type(value) is not dict or not value:
        return False
    for key, item in value.items():
        check = fields.get(key)
        if check is None or not check(item):
            return False
    return all(map(value.__contains__, required))


def _list(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def valid(value: Any) -> bool:
        return type(value) is list and 0 < len(value) <= 1000 and all(map(check, value))

    return valid


# Each element's fields and their checks, built once (not on every call).
_CODING: dict[str, Callable[[Any], bool]] = {
    "system": _uri,
    "code": _code,
    "display": _string,
    "version": _string,
}


def _coding(value: Any) -> bool:
    return _object(value, _CODING)


_CONCEPT: dict[str, Callable[[Any], bool]] = {"coding": _list(_coding), "text": _string}


def _concept(value: Any) -> bool:
    return _object(value, _CONCEPT)


_IDENTIFIER: dict[str, Callable[[Any], bool]] = {"system": _uri, "value": _string}


def _identifier(value: Any) -> bool:
    return _object(value, _IDENTIFIER)


_BY_IDENTIFIER: dict[str, Callable[[Any], bool]] = {"identifier": _identifier, "display": _string}


def _by_identifier(value: Any) -> bool:
    return _object(value, _BY_IDENTIFIER, ("identifier",))


_QUANTITY: dict[str, Callable[[Any], bool]] = {
    "value": _number,
    "unit": _string,
    "system": _uri,
    "code": _code,
}


def _quantity(value: Any) -> bool:
    return _object(value, _QUANTITY)


_COMPONENT: dict[str, Callable[[Any], bool]] = {"code": _concept, "valueQuantity": _quantity}


def _component(value: Any) -> bool:
    return _object(value, _COMPONENT, ("code",))


def _fhir_id(value: Any) -> bool:
    return type(value) is str and _ID.fullmatch(value) is not None


_META: dict[str, Callable[[Any], bool]] = {
    "profile": _list(_uri),
    "versionId": _fhir_id,
    "lastUpdated": _instant,
    "source": _uri,
}


def _meta(value: Any) -> bool:
    return _object(value, _META)


_NOTE: dict[str, Callable[[Any], bool]] = {"text": _string}


def _note(value: Any) -> bool:
    return _object(value, _NOTE, ("text",))


_OBSERVATION: dict[str, Callable[[Any], bool]] = {
    "resourceType": lambda v: v == "Observation",
    "id": _fhir_id,
    "meta": _meta,
    "identifier": _list(_identifier),
    "status": _code,
    "category": _list(_concept),
    "code": _concept,
    "subject": _by_identifier,
    "effectiveDateTime": _date_time,
    "performer": _list(_by_identifier),
    "valueQuantity": _quantity,
    "component": _list(_component),
    "note": _list(_note),
}


def plainly_valid(resource: Any) -> bool:
    """``True`` when ``resource`` is an Observation of the common shape that FHIR R4 structure accepts;
    ``False`` means "not decided here" (validate it with the model)."""
    return _object(resource, _OBSERVATION, ("resourceType", "status", "code"))
