"""The measurement types with their codes, UCUM units and plausible ranges.

The table is domain.md ("Measurements"), completed from the reference material, nothing invented:

* LOINC 59408-5 (oxygen saturation by pulse oximetry) beside 2708-6: the parent of VkpObservationOxygensat
  is HL7's ``oxygensat`` vital-signs profile (``vkpobservation/fsh/profiles/VkpObservationOxygensat.fsh``
  line 2), whose R4 example (``observation-example-satO2``) codes a pulse-oximetry reading with both.
* Body height (LOINC 8302-2, ``cm``) and body mass index (LOINC 39156-5, ``kg/m2``): the VKP IG's own
  examples ``body-height-create.json`` and ``body-mass-index-create.json``; head circumference (9843-4)
  completes FHIR R4's ``observation-vitalsignresult`` value set, which lists every code above.

A measurement type is recognised from any of its codings (LOINC, SNOMED CT or NPU); once recognised,
the value must carry the type's UCUM unit and lie in a physiologically plausible range. The ``kind`` is
stored with every observation and groups ``$lastn`` across code systems. A code outside the table is
refused unless the tenant allows unknown codes; then its unit must still be valid UCUM (:func:`is_ucum`,
the ``ucumvert`` grammar of the UCUM specification).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from ucumvert import get_ucum_parser

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
NPU = "urn:oid:2.16.578.1.12.4.1.1.7280"
UCUM = "http://unitsofmeasure.org"
CODE_SYSTEMS = frozenset({LOINC, SNOMED, NPU})
"""The ``code.coding`` slices of ``VkpObservation``: LOINC, SNOMED CT and NPU/NLK."""

OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


@dataclass(frozen=True, slots=True)
class Range:
    """A plausible value range in one unit: ``low <= value <= high``."""

    unit: str
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class MeasurementType:
    """One row of domain.md's measurement table."""

    kind: str
    codes: frozenset[tuple[str, str]]
    ranges: tuple[Range, ...] = ()
    """Accepted UCUM units with their ranges; empty when the value is a score or coded."""
    score: bool = False
    components: tuple[tuple[frozenset[tuple[str, str]], Range], ...] = ()


def _codes(*pairs: tuple[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset(pairs)


_BP = Range("mm[Hg]", 10, 300)
MEASUREMENT_TYPES: tuple[MeasurementType, ...] = (
    MeasurementType(
        "heart-rate", _codes((LOINC, "8867-4"), (SNOMED, "364075005")), (Range("/min", 10, 350),)
    ),
    MeasurementType(
        "blood-pressure",
        _codes((LOINC, "85354-9"), (SNOMED, "75367002")),
        components=(
            (_codes((LOINC, "8480-6"), (SNOMED, "271649006")), _BP),
            (_codes((LOINC, "8462-4"), (SNOMED, "271650006")), _BP),
            (_codes((LOINC, "8478-0")), _BP),
        ),
    ),
    MeasurementType(
        "oxygen-saturation",
        _codes((LOINC, "2708-6"), (LOINC, "59408-5"), (SNOMED, "431314004")),
        (Range("%", 0, 100),),
    ),
    MeasurementType(
        "blood-glucose",
        _codes((LOINC, "15074-8"), (SNOMED, "434912009"), (NPU, "NPU02187")),
        (Range("mmol/L", 0.5, 60),),
    ),
    MeasurementType(
        "body-temperature", _codes((LOINC, "8310-5"), (SNOMED, "276885007")), (Range("Cel", 25, 45),)
    ),
    MeasurementType(
        "body-weight",
        _codes((LOINC, "29463-7"), (SNOMED, "27113001")),
        (Range("kg", 0.2, 650), Range("g", 200, 650_000)),
    ),
    MeasurementType(
        "respiratory-rate", _codes((LOINC, "9279-1"), (SNOMED, "86290005")), (Range("/min", 1, 100),)
    ),
    MeasurementType("body-height", _codes((LOINC, "8302-2")), (Range("cm", 20, 300), Range("m", 0.2, 3))),
    MeasurementType("body-mass-index", _codes((LOINC, "39156-5")), (Range("kg/m2", 5, 150),)),
    MeasurementType("head-circumference", _codes((LOINC, "9843-4")), (Range("cm", 10, 100),)),
    MeasurementType("news2", _codes((SNOMED, "1104051000000101")), score=True),
    MeasurementType("clinical-frailty", _codes((SNOMED, "763264000")), score=True),
    MeasurementType("consciousness", _codes((SNOMED, "1104441000000107")), score=True),
)

_BY_CODE: dict[tuple[str, str], MeasurementType] = {code: mt for mt in MEASUREMENT_TYPES for code in mt.codes}

# UCUM is case-sensitive, but a few case-insensitive spellings are in wide use (the IG's own glucose
# example says ``mmol/l``); each maps to the one canonical code it can only mean.
_UCUM_EQUIVALENTS = {
    "mmol/l": "mmol/L",
    "MMOL/L": "mmol/L",
    "mm[hg]": "mm[Hg]",
    "MM[HG]": "mm[Hg]",
    "mmHg": "mm[Hg]",
    "cel": "Cel",
    "CEL": "Cel",
    "KG": "kg",
    "/MIN": "/min",
}


def canonical_ucum(code: str) -> str:
    """The canonical UCUM spelling of ``code`` (unchanged when already canonical or unknown)."""
    return _UCUM_EQUIVALENTS.get(code, code)


def measurement_type(codings: list[tuple[str, str]]) -> MeasurementType | None:
    """The measurement type any of ``codings`` (system, code) names, or ``None``."""
    for coding in codings:
        mt = _BY_CODE.get(coding)
        if mt is not None:
            return mt
    return None


def measure_ranges(coding: tuple[str, str]) -> tuple[MeasurementType, tuple[Range, ...]] | None:
    """What a ``Goal.target.measure`` coding measures: its measurement type and the units (with plausible
    ranges) a value of it takes: the type's own, or a component's (systolic 8480-6 is blood pressure
    in ``mm[Hg]``). ``None`` for a code that is not in the table or has no unit (scores, coded)."""
    mt = _BY_CODE.get(coding)
    if mt is not None:
        return (mt, mt.ranges) if mt.ranges else None
    for mt in MEASUREMENT_TYPES:
        for codes, rng in mt.components:
            if coding in codes:
                return mt, (rng,)
    return None


@cache
def _ucum_parser() -> Any:
    return get_ucum_parser()


@cache
def is_ucum(code: str) -> bool:
    """``code`` is a valid UCUM expression (The Unified Code for Units of Measure, c/s grammar)."""
    if not code or len(code) > 64 or not code.isascii():
        return False
    try:
        _ucum_parser().parse(code)
    except Exception:  # lark's UnexpectedInput family: not a UCUM expression
        return False
    return True
