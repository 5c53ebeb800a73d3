"""The project value set of plan activities: which measurement the patient takes, and how often.

``CarePlan.activity[].detail.code`` must carry one of :data:`ACTIVITY_CODES` (LOINC), and
``detail.scheduledTiming.repeat`` says how often (``frequency`` times per ``period`` ``periodUnit``).
Each code is a measurement type of the vital-sign registry (:mod:`sharing_api.fhir.vitals`); the table
in ``docs/careplans.md`` is this one (a test keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass

from sharing_api.fhir.vitals import LOINC

VALUE_SET = "urn:dho-share:ValueSet:careplan-activity"
"""The canonical name of this value set (a project value set; no national one exists yet)."""


@dataclass(frozen=True, slots=True)
class Activity:
    """One measurement a plan can ask for: its LOINC code, the registry's kind, and a display."""

    code: str
    kind: str
    display: str


ACTIVITY_CODES: tuple[Activity, ...] = (
    Activity("85354-9", "blood-pressure", "Measure blood pressure"),
    Activity("8867-4", "heart-rate", "Measure heart rate"),
    Activity("59408-5", "oxygen-saturation", "Measure oxygen saturation (pulse oximetry)"),
    Activity("2708-6", "oxygen-saturation", "Measure oxygen saturation"),
    Activity("29463-7", "body-weight", "Measure body weight"),
    Activity("8310-5", "body-temperature", "Measure body temperature"),
    Activity("9279-1", "respiratory-rate", "Measure respiratory rate"),
    Activity("15074-8", "blood-glucose", "Measure blood glucose"),
)
BY_CODE = {(LOINC, a.code): a for a in ACTIVITY_CODES}

PERIOD_UNITS = ("h", "d", "wk", "mo")
"""``Timing.repeat.periodUnit`` values a measurement schedule may use (UCUM, FHIR ``units-of-time``)."""
