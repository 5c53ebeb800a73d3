"""``Observation/$evaluate``: a patient's latest measurements against the active plan's thresholds.

Pure: the route reads the patient's active Goals and, per threshold, the measurements of that measure
(newest first, inside the sharing decision); :func:`assess` says whether the latest is within or outside
and since when (the oldest measurement of the unbroken run of that state, among those read), and
:func:`evaluation_parameters` writes the answer as a FHIR ``Parameters`` resource (docs/careplans.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sharing_api.careplans.thresholds import Check, Target, check, targets


@dataclass(frozen=True, slots=True)
class Result:
    """One threshold: the latest check (``None``: no measurement of it), and since when it holds."""

    target: Target
    latest: Check | None
    since: str | None
    measurements: int
    """How many measurements were looked at (the run since ``since`` cannot reach further back)."""


def active_targets(goals: Iterable[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], Target]]:
    """Every threshold of the active ``goals``, with the Goal it belongs to."""
    return [(goal, target) for goal in goals for target in targets(goal)]


def assess(goal: Mapping[str, Any], target: Target, observations: Sequence[Mapping[str, Any]]) -> Result:
    """``observations`` (newest first) against ``target`` of ``goal``."""
    checks = [
        c
        for obs in observations
        for c in check([goal], obs)
        if c.target == target  # one Goal can hold several targets
    ]
    if not checks:
        return Result(target, None, None, len(observations))
    latest = checks[0]
    since = latest.effective
    for c in checks[1:]:
        if c.status != latest.status:
            break
        since = c.effective
    return Result(target, latest, since, len(observations))


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}


def _measure(t: Target) -> dict[str, str]:
    coding = {"system": t.measure[0], "code": t.measure[1]}
    return coding | {"display": t.display} if t.display else coding


def evaluation_parameters(results: Sequence[Result], plans: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The answer of ``$evaluate``: one ``evaluation`` parameter per threshold, and the plans used."""
    parameters: list[dict[str, Any]] = [
        {"name": "carePlan", "valueReference": {"reference": f"CarePlan/{plan.get('id')}"}} for plan in plans
    ]
    for r in results:
        t = r.target
        part: list[dict[str, Any]] = [
            {"name": "goal", "valueReference": {"reference": f"Goal/{t.goal_id}"}},
            {"name": "measure", "valueCoding": _measure(t)},
            {"name": "target", "valueString": t.text()},
            {"name": "status", "valueCode": r.latest.status if r.latest else "no-data"},
        ]
        if t.description:
            part.append({"name": "description", "valueString": t.description})
        if r.latest is not None:
            if r.latest.observation_id:
                ref = f"Observation/{r.latest.observation_id}"
                part.append({"name": "observation", "valueReference": {"reference": ref}})
            part.append({"name": "value", "valueQuantity": _quantity(r.latest.value, r.latest.unit)})
            part.append({"name": "effective", "valueDateTime": r.latest.effective})
            if r.since:
                part.append({"name": "since", "valueDateTime": r.since})
        parameters.append({"name": "evaluation", "part": part})
    out: dict[str, Any] = {"resourceType": "Parameters"}
    if parameters:
        out["parameter"] = parameters
    return out
