"""FHIR ``date``/``dateTime``/``instant`` values as half-open ranges of epoch microseconds.

FHIR search compares *ranges*: ``2021-05-10`` stands for the whole day, ``2021-05`` for the month
(FHIR R4 search, "date"). A value without a time zone is read in Norwegian local time
(Europe/Oslo), where this service's data comes from.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

LOCAL_ZONE = ZoneInfo("Europe/Oslo")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
OPEN_END = 253_402_300_800_000_000
"""The end of a ``Period`` without ``end`` (ongoing, FHIR R4 datatypes "Period"): 10000-01-01T00:00Z in
epoch microseconds, after every date a search can name, so ``date=gt...`` finds an ongoing period."""

_DATETIME = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


class DateFormatError(ValueError):
    """The value is not a FHIR date, dateTime or instant."""


def to_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


@lru_cache(maxsize=1024)
def format_instant(micros: int) -> str:
    """An ``instant`` in UTC with millisecond precision, as ``meta.lastUpdated`` carries it (kept: a
    Bundle's entries share one time, formatted for each stored resource and response entry)."""
    return from_micros(micros).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


@lru_cache(maxsize=256)
def _offset_zone(tz: str) -> tzinfo | None:
    """The zone of an offset such as ``+01:00`` (kept: a data set carries a handful; a bad one raises
    ``ValueError`` each time, as ``strptime`` does)."""
    return datetime.strptime(tz.replace(":", ""), "%z").tzinfo


def parse_range(value: str, *, require_zone_with_time: bool = True) -> tuple[int, int]:
    """The half-open range ``[start, end)`` in epoch microseconds that ``value`` stands for.

    Raises ``DateFormatError`` for anything that is not a FHIR date/dateTime/instant (R4 datatypes).
    A time needs a zone (``Z`` or an offset) per the dateTime datatype; seconds may be left out in
    search values (FHIR search allows ``2021-05-10T10:00``).
    """
    m = _DATETIME.fullmatch(value)
    if m is None:
        raise DateFormatError(f"{value!r} is not a FHIR date or dateTime")
    g = m.groupdict()
    try:
        year = int(g["year"])
        if g["month"] is None:
            start = datetime(year, 1, 1, tzinfo=LOCAL_ZONE)
            return to_micros(start), to_micros(datetime(year + 1, 1, 1, tzinfo=LOCAL_ZONE))
        month = int(g["month"])
        if g["day"] is None:
            start = datetime(year, month, 1, tzinfo=LOCAL_ZONE)
            ny, nm = _next_month(year, month)
            return to_micros(start), to_micros(datetime(ny, nm, 1, tzinfo=LOCAL_ZONE))
        day = int(g["day"])
        if g["hour"] is None:
            start = datetime(year, month, day, tzinfo=LOCAL_ZONE)
            nxt = (start.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=LOCAL_ZONE)
            return to_micros(start), to_micros(nxt)
        tz = g["tz"]
        if tz is None:
            if require_zone_with_time:
                raise DateFormatError(f"{value!r} has a time but no time zone")
            zone = LOCAL_ZONE
        else:
            zone = UTC if tz == "Z" else _offset_zone(tz)  # type: ignore[assignment]
        fraction = g["fraction"] or ""
        micro = int((fraction + "000000")[:6]) if fraction else 0
        start = datetime(
            year, month, day, int(g["hour"]), int(g["minute"]), int(g["second"] or 0), micro, tzinfo=zone
        )
    except (ValueError, OverflowError) as exc:  # OverflowError: the day after 9999-12-31
        raise DateFormatError(f"{value!r} is not a valid date: {exc}") from exc
    if g["second"] is None:
        width = 60_000_000
    elif fraction:
        width = max(1, 10 ** (6 - min(len(fraction), 6)))
    else:
        width = 1_000_000
    begin = to_micros(start)
    return begin, begin + width
