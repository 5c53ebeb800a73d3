"""Measurements against a plan's thresholds: pure functions over FHIR JSON (no I/O, no web).

A threshold is a ``Goal.target``: ``measure`` (a code of the vital-sign registry, e.g. LOINC 8480-6
systolic blood pressure) and the target the value should meet, ``detailQuantity`` with a comparator
(``<= 180 mm[Hg]``: "call if systolic > 180") or ``detailRange`` (both ends inclusive). A measurement
*matches* a target when its ``code`` (for a single value) or a ``component.code`` (blood pressure)
names the same measurement, in any of the registry's code systems. The value is compared in the
target's unit (``kg``/``g`` and ``cm``/``m`` are converted); a value in another unit is not compared.

Only ``active`` Goals count, and only measurements that are not ``entered-in-error`` or ``cancelled``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sharing_api.fhir.vitals import MEASUREMENT_TYPES, canonical_ucum

Status = Literal["within", "outside"]
IGNORED_STATUSES = frozenset({"entered-in-error", "cancelled"})
_FACTORS = {("g", "kg"): 0.001, ("kg", "g"): 1000.0, ("m", "cm"): 100.0, ("cm", "m"): 0.01}


def _equivalents() -> dict[tuple[str, str], frozenset[tuple[str, str]]]:
    """Each registry coding -> every coding naming the same measurement (or the same component)."""
    out: dict[tuple[str, str], frozenset[tuple[str, str]]] = {}
    for mt in MEASUREMENT_TYPES:
        for code in mt.codes:
            out[code] = mt.codes
        for codes, _ in mt.components:
            for code in codes:
                out[code] = codes
    return out


_SAME = _equivalents()


@dataclass(frozen=True, slots=True)
class Target:
    """One threshold of one Goal: the acceptable values ``[low, high]`` (open ends ``None``)."""

    goal_id: str
    measure: tuple[str, str]
    unit: str
    low: float | None
    high: float | None
    low_inclusive: bool = True
    high_inclusive: bool = True
    description: str = ""
    display: str = ""
    """The Goal's own name for the measure (its ``measure.coding.display``), shown beside the code."""

    def accepts(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return False
        return not (
            self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive))
        )

    def text(self) -> str:
        """The target in words, e.g. ``<= 180 mm[Hg]`` or ``90-100 %``."""
        if self.low is not None and self.high is not None:
            return f"{self.low:g}-{self.high:g} {self.unit}"
        if self.high is not None:
            return f"{'<=' if self.high_inclusive else '<'} {self.high:g} {self.unit}"
        return f"{'>=' if self.low_inclusive else '>'} {self.low:g} {self.unit}"


@dataclass(frozen=True, slots=True)
class Check:
    """One measurement value checked against one target."""

    target: Target
    observation_id: str | None
    value: float
    unit: str
    effective: str
    status: Status


def _coding(concept: Any) -> list[tuple[str, str]]:
    if not isinstance(concept, Mapping):
        return []
    return [
        (c["system"], c["code"])
        for c in concept.get("coding") or []
        if isinstance(c, Mapping) and isinstance(c.get("system"), str) and isinstance(c.get("code"), str)
    ]


def _display(concept: Any) -> str:
    """The first ``display`` of the concept's codings (``""`` when none has one)."""
    if not isinstance(concept, Mapping):
        return ""
    for c in concept.get("coding") or []:
        if isinstance(c, Mapping) and isinstance(c.get("display"), str) and c["display"]:
            return str(c["display"])
    return ""


def _value(quantity: Any) -> tuple[float, str] | None:
    if not isinstance(quantity, Mapping):
        return None
    value, code = quantity.get("value"), quantity.get("code")
    if isinstance(value, bool) or not isinstance(value, int | float) or not isinstance(code, str):
        return None
    return float(value), canonical_ucum(code)


def targets(goal: Mapping[str, Any]) -> list[Target]:
    """The thresholds of one stored Goal (validated JSON); none unless it is ``active``."""
    if goal.get("lifecycleStatus") != "active":
        return []
    goal_id = str(goal.get("id", ""))
    description = str((goal.get("description") or {}).get("text", ""))
    out: list[Target] = []
    for target in goal.get("target") or []:
        measures = _coding(target.get("measure"))
        if not measures:
            continue
        display = _display(target.get("measure"))
        if "detailQuantity" in target:
            q = target["detailQuantity"]
            found = _value(q)
            if found is None:
                continue
            value, unit = found
            comparator = q.get("comparator")
            if comparator in ("<", "<="):
                out.append(
                    Target(
                        goal_id,
                        measures[0],
                        unit,
                        None,
                        value,
                        high_inclusive=comparator == "<=",
                        description=description,
                        display=display,
                    )
                )
            elif comparator in (">", ">="):
                out.append(
                    Target(
                        goal_id,
                        measures[0],
                        unit,
                        value,
                        None,
                        low_inclusive=comparator == ">=",
                        description=description,
                        display=display,
                    )
                )
        elif "detailRange" in target:
            span = target["detailRange"]
            low, high = _value(span.get("low")), _value(span.get("high"))
            if low is None and high is None:
                continue
            unit = (low or high or (0.0, ""))[1]
            out.append(
                Target(
                    goal_id,
                    measures[0],
                    unit,
                    _convert(low, unit) if low else None,
                    _convert(high, unit) if high else None,
                    description=description,
                    display=display,
                )
            )
    return out


def _convert(found: tuple[float, str], unit: str) -> float | None:
    value, have = found
    if have == unit:
        return value
    factor = _FACTORS.get((have, unit))
    return value * factor if factor is not None else None


def _readings(observation: Mapping[str, Any]) -> list[tuple[frozenset[tuple[str, str]], tuple[float, str]]]:
    """(codings naming it, (value, unit)) for the observation's value and each component's."""
    out = []
    main = _value(observation.get("valueQuantity"))
    if main is not None:
        out.append((frozenset(_coding(observation.get("code"))), main))
    for component in observation.get("component") or []:
        if isinstance(component, Mapping):
            found = _value(component.get("valueQuantity"))
            if found is not None:
                out.append((frozenset(_coding(component.get("code"))), found))
    return out


def _effective(observation: Mapping[str, Any]) -> str:
    when = observation.get("effectiveDateTime") or observation.get("effectiveInstant")
    if when is None and isinstance(observation.get("effectivePeriod"), Mapping):
        when = observation["effectivePeriod"].get("start")
    return str(when or "")


def matches(target: Target, codes: Iterable[tuple[str, str]]) -> bool:
    """Whether ``codes`` name the measurement ``target`` is about (in any registry code system)."""
    same = _SAME.get(target.measure, frozenset({target.measure}))
    return any(c in same for c in codes)


def check(goals: Iterable[Mapping[str, Any]], observation: Mapping[str, Any]) -> list[Check]:
    """``observation`` checked against every threshold of ``goals`` that it measures."""
    if observation.get("status") in IGNORED_STATUSES:
        return []
    readings = _readings(observation)
    out: list[Check] = []
    for goal in goals:
        for target in targets(goal):
            for codes, found in readings:
                if not matches(target, codes):
                    continue
                value = _convert(found, target.unit)
                if value is None:
                    continue
                status: Status = "within" if target.accepts(value) else "outside"
                obs_id = observation.get("id")
                out.append(
                    Check(
                        target,
                        str(obs_id) if obs_id else None,
                        found[0],
                        found[1],
                        _effective(observation),
                        status,
                    )
                )
    return out


def breaches(goals: Iterable[Mapping[str, Any]], observation: Mapping[str, Any]) -> list[Check]:
    """The thresholds of ``goals`` (stored Goal JSON) that ``observation`` (Observation JSON) falls
    outside of: empty when it is within all of them, measures none of them, or is not a valid reading."""
    return [c for c in check(goals, observation) if c.status == "outside"]
