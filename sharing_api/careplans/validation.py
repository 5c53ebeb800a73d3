"""Inbound ``CarePlan`` and ``Goal`` validation: FHIR R4 structure (fhir.resources R4B, at the edge only)
plus this project's plan rules (docs/careplans.md). Every problem is an ``Issue`` naming the element;
all problems of a resource are reported together, and nothing is stored when there is one.

Rules shared with Observations are the Observation validator's own (``sharing_api.fhir.validation``):
the subject by FNR/DNR/FHN identifier with control digits, codings with system and code, UCUM units
and plausible values per vital sign, no active content in the narrative, no client security labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.goal import Goal
from pydantic import ValidationError

from sharing_api.careplans.activities import BY_CODE, PERIOD_UNITS, VALUE_SET
from sharing_api.errors import InvalidResource, Issue
from sharing_api.fhir import identifiers as ids
from sharing_api.fhir import vitals
from sharing_api.fhir.dates import DateFormatError, parse_range
from sharing_api.fhir.validation import (
    check_narrative,
    check_quantity,
    check_subject,
    codings,
    refuse_server_labels,
)

VERSION_AUTHOR = "urn:dho-share:StructureDefinition/version-author"
"""``meta.extension`` the server writes on every stored version: who wrote it (docs/careplans.md). Like
``meta.versionId`` it is the server's: one sent back with an update (a read, changed, PUT back) is
replaced by the new version's author."""
COMPARATORS = ("<", "<=", ">=", ">")
CAREPLAN_STATUSES = ("draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown")
CAREPLAN_INTENTS = ("proposal", "plan", "order", "option")
ACTIVITY_STATUSES = (
    "not-started",
    "scheduled",
    "in-progress",
    "on-hold",
    "completed",
    "cancelled",
    "stopped",
    "unknown",
    "entered-in-error",
)
GOAL_STATUSES = (
    "proposed",
    "planned",
    "accepted",
    "active",
    "on-hold",
    "completed",
    "cancelled",
    "entered-in-error",
    "rejected",
)
"""R4's required bindings (``request-status``, ``care-plan-intent``, ``care-plan-activity-status``,
``goal-status``): the models check the type, these the codes."""


def _code(value: Any, allowed: tuple[str, ...], path: str, issues: list[Issue]) -> None:
    if value is not None and value not in allowed:
        issues.append(Issue(f"must be one of {', '.join(allowed)}", path))


PLAN_TYPES = ("CarePlan", "Goal")


@dataclass(frozen=True, slots=True)
class ValidPlanResource:
    """A validated CarePlan or Goal and the values the store indexes it by."""

    resource_type: str
    resource: dict[str, Any]
    patient: tuple[str, str]
    status: str
    categories: tuple[tuple[str, str], ...] = ()
    period: tuple[int | None, int | None] = (None, None)
    goals: tuple[str, ...] = ()
    """The ``Goal`` ids a CarePlan refers to (``CarePlan.goal``: ``Goal/<id>`` in this tenant)."""


def _structure(model: Any, resource: dict[str, Any], root: str) -> list[Issue]:
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        return [
            Issue(e["msg"], root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]))
            for e in exc.errors(include_url=False)
        ]
    except (ValueError, TypeError) as exc:  # fhir.resources raises plain errors from some validators
        return [Issue(str(exc), root)]
    return []


def _refuse_unknown(resource: dict[str, Any], root: str, issues: list[Issue]) -> None:
    """What would change the meaning unseen, or what the server owns, is refused, never dropped."""
    if "modifierExtension" in resource:
        issues.append(Issue("modifierExtension is not supported", f"{root}.modifierExtension"))
    if "contained" in resource:
        issues.append(
            Issue("contained resources are not supported; refer to stored resources", f"{root}.contained")
        )


def _party(ref: Any, path: str, issues: list[Issue]) -> None:
    """An author or contributor: an organisation by org.nr or a health worker by HPR number."""
    if not isinstance(ref, dict):
        return
    if "reference" in ref:
        issues.append(Issue("give the author by identifier, not by a literal reference", f"{path}.reference"))
        return
    ident = ref.get("identifier")
    system = ident.get("system") if isinstance(ident, dict) else None
    value = ident.get("value") if isinstance(ident, dict) else None
    if not isinstance(system, str) or not isinstance(value, str):
        issues.append(Issue("an author is given by identifier (system and value)", f"{path}.identifier"))
    elif system == ids.ORGNR:
        if not ids.is_valid_orgnr(value):
            issues.append(
                Issue("not a valid organisasjonsnummer (9 digits, control digit)", f"{path}.identifier.value")
            )
    elif system == ids.HPR:
        if not ids.is_valid_hpr(value):
            issues.append(Issue("an HPR number is 1-9 digits", f"{path}.identifier.value"))
    else:
        issues.append(
            Issue(
                f"an author is an organisation ({ids.ORGNR}) or a health worker ({ids.HPR}), not {system!r}",
                f"{path}.identifier.system",
            )
        )


def _period(resource: dict[str, Any], root: str, issues: list[Issue]) -> tuple[int | None, int | None]:
    period = resource.get("period")
    if not isinstance(period, dict):
        return (None, None)
    try:
        start = parse_range(period["start"])[0] if "start" in period else None
        end = parse_range(period["end"])[1] if "end" in period else None
    except (DateFormatError, TypeError) as exc:
        issues.append(Issue(str(exc), f"{root}.period"))
        return (None, None)
    if start is not None and end is not None and end < start:
        issues.append(Issue("the period ends before it starts", f"{root}.period.end"))
    return (start, end)


def _activity(activity: Any, path: str, issues: list[Issue]) -> None:
    if not isinstance(activity, dict):
        return
    if "reference" in activity:
        issues.append(Issue("activities are given inline as detail, not by reference", f"{path}.reference"))
    detail = activity.get("detail")
    if not isinstance(detail, dict):
        issues.append(Issue("an activity needs its detail: code and schedule", f"{path}.detail"))
        return
    if "modifierExtension" in detail:
        issues.append(Issue("modifierExtension is not supported", f"{path}.detail.modifierExtension"))
    _code(detail.get("status"), ACTIVITY_STATUSES, f"{path}.detail.status", issues)
    coded = codings(detail.get("code"), f"{path}.detail.code", issues)
    if not any(c in BY_CODE for c in coded):
        allowed = ", ".join(code for _, code in BY_CODE)
        issues.append(
            Issue(
                f"an activity's code must be from the value set {VALUE_SET} (LOINC {allowed})",
                f"{path}.detail.code",
            )
        )
    timing = detail.get("scheduledTiming")
    repeat = timing.get("repeat") if isinstance(timing, dict) else None
    if not isinstance(repeat, dict):
        issues.append(
            Issue(
                "how often to measure: scheduledTiming.repeat with frequency, period and periodUnit",
                f"{path}.detail.scheduledTiming.repeat",
            )
        )
        return
    where = f"{path}.detail.scheduledTiming.repeat"
    frequency, period, unit = repeat.get("frequency"), repeat.get("period"), repeat.get("periodUnit")
    if not isinstance(frequency, int) or frequency < 1:
        issues.append(Issue("frequency is a whole number of times, at least 1", f"{where}.frequency"))
    if not isinstance(period, int | float) or period <= 0:
        issues.append(Issue("period is a positive number", f"{where}.period"))
    if unit not in PERIOD_UNITS:
        issues.append(Issue(f"periodUnit is one of {', '.join(PERIOD_UNITS)}", f"{where}.periodUnit"))


def _goal_ids(resource: dict[str, Any], issues: list[Issue]) -> tuple[str, ...]:
    out: list[str] = []
    for i, ref in enumerate(resource.get("goal") or []):
        target = ref.get("reference") if isinstance(ref, dict) else None
        goal_id = target.removeprefix("Goal/") if isinstance(target, str) else ""
        if not isinstance(target, str) or not target.startswith("Goal/") or not goal_id or "/" in goal_id:
            issues.append(
                Issue("a goal is referred to as Goal/<id> (a Goal stored here)", f"CarePlan.goal[{i}]")
            )
        else:
            out.append(goal_id)
    return tuple(dict.fromkeys(out))


def _finish(issues: list[Issue]) -> None:
    if issues:
        issues = list(dict.fromkeys(issues))
        raise InvalidResource(issues[0].diagnostics, issues=issues)


def _start(resource: Any, resource_type: str) -> dict[str, Any]:
    if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
        raise InvalidResource(f"expected a {resource_type} resource", f"{resource_type}.resourceType")
    refuse_server_labels(resource, resource_type)
    return resource


def validate_careplan(resource: Any) -> ValidPlanResource:
    """Validate one inbound CarePlan; raise ``InvalidResource`` naming every problem."""
    plan = _start(resource, "CarePlan")
    issues = _structure(CarePlan, plan, "CarePlan")
    _refuse_unknown(plan, "CarePlan", issues)
    _code(plan.get("status"), CAREPLAN_STATUSES, "CarePlan.status", issues)
    _code(plan.get("intent"), CAREPLAN_INTENTS, "CarePlan.intent", issues)
    patient = check_subject(plan, issues, root="CarePlan")
    authors = plan.get("author")
    if authors is None:
        issues.append(
            Issue("author is required: the organisation or health worker responsible", "CarePlan.author")
        )
    _party(authors, "CarePlan.author", issues)
    for i, contributor in enumerate(plan.get("contributor") or []):
        _party(contributor, f"CarePlan.contributor[{i}]", issues)
    categories: list[tuple[str, str]] = []
    for i, cat in enumerate(plan.get("category") or []):
        categories += codings(cat, f"CarePlan.category[{i}]", issues)
    for i, activity in enumerate(plan.get("activity") or []):
        _activity(activity, f"CarePlan.activity[{i}]", issues)
    period = _period(plan, "CarePlan", issues)
    goals = _goal_ids(plan, issues)
    check_narrative(plan, issues, root="CarePlan")
    _finish(issues)
    return ValidPlanResource(
        "CarePlan",
        plan,
        patient,
        str(plan.get("status")),
        tuple(dict.fromkeys(categories)),
        period,
        goals,
    )


def _target(target: Any, path: str, issues: list[Issue]) -> None:
    """A threshold: a measure of the vital-sign registry and a quantity (with comparator) or range in
    that measure's UCUM unit, checked like an Observation's value."""
    if not isinstance(target, dict):
        return
    measure = codings(target.get("measure"), f"{path}.measure", issues)
    known = next((found for c in measure if (found := vitals.measure_ranges(c)) is not None), None)
    if known is None:
        issues.append(
            Issue(
                "target.measure must be a measurement with a unit in the vital-sign registry "
                "(e.g. LOINC 8480-6 systolic blood pressure)",
                f"{path}.measure",
            )
        )
        return
    _, ranges = known
    details = [k for k in target if k.startswith("detail")]
    if details not in (["detailQuantity"], ["detailRange"]):
        issues.append(Issue("a threshold is a detailQuantity or a detailRange", f"{path}.detail[x]"))
        return
    if "detailQuantity" in target:
        quantity = target["detailQuantity"]
        if isinstance(quantity, dict) and quantity.get("comparator") not in COMPARATORS:
            issues.append(
                Issue(
                    f"a threshold quantity needs a comparator ({', '.join(COMPARATORS)}): the target the "
                    "value must meet",
                    f"{path}.detailQuantity.comparator",
                )
            )
        check_quantity(quantity, None, None, ranges, f"{path}.detailQuantity", issues)
        return
    span = target["detailRange"]
    if not isinstance(span, dict) or not ("low" in span or "high" in span):
        issues.append(Issue("a threshold range needs low, high or both", f"{path}.detailRange"))
        return
    for end in ("low", "high"):
        if end in span:
            check_quantity(span[end], None, None, ranges, f"{path}.detailRange.{end}", issues)
    low, high = span.get("low", {}).get("value"), span.get("high", {}).get("value")
    if isinstance(low, int | float) and isinstance(high, int | float) and low > high:
        issues.append(Issue("the range's low is above its high", f"{path}.detailRange"))


def validate_goal(resource: Any) -> ValidPlanResource:
    """Validate one inbound Goal; raise ``InvalidResource`` naming every problem."""
    goal = _start(resource, "Goal")
    issues = _structure(Goal, goal, "Goal")
    _refuse_unknown(goal, "Goal", issues)
    _code(goal.get("lifecycleStatus"), GOAL_STATUSES, "Goal.lifecycleStatus", issues)
    patient = check_subject(goal, issues, root="Goal")
    for i, target in enumerate(goal.get("target") or []):
        _target(target, f"Goal.target[{i}]", issues)
    check_narrative(goal, issues, root="Goal")
    _finish(issues)
    return ValidPlanResource("Goal", goal, patient, str(goal.get("lifecycleStatus")))


VALIDATORS = {"CarePlan": validate_careplan, "Goal": validate_goal}
