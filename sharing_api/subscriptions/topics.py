"""The subscription topics this server offers, each with the agreement data category it needs.

The one registry of topics: validation of ``Subscription.criteria``, the sharing decision at creation
and at delivery, and the CapabilityStatement all read :data:`TOPICS`. Adding a topic is one entry here
(and an ``emit`` call where its event happens).

Topic canonicals follow the Subscriptions R5 Backport IG (``Subscription.criteria`` is the topic's
canonical URL); this server publishes no ``SubscriptionTopic`` resources, so the canonicals are URNs in
this project's namespace, like its own operations (``urn:dho-share:OperationDefinition:``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

TOPIC_PREFIX = "urn:dho-share:SubscriptionTopic:"

PLAN_CATEGORY = "plan"
"""The agreement data category of treatment and self-treatment plans (CarePlan, Goal): issue 11."""
VITAL_SIGNS_CATEGORY = "vital-signs"
"""The observation category of home measurements (HL7 observation-category)."""


@dataclass(frozen=True, slots=True)
class Topic:
    """One topic: what triggers it, which resource it is about, and what a subscriber must be allowed.

    ``categories`` are the agreement data categories the subscriber's agreement with the controller must
    grant (at least one) when subscribing and again at every delivery; ``read_scope`` the scope its token
    must carry to subscribe (the scope that would let it read the notified resource).
    """

    code: str
    resource: str
    categories: frozenset[str]
    read_scope: str
    description: str

    @property
    def url(self) -> str:
        return TOPIC_PREFIX + self.code


CAREPLAN_VERSION = Topic(
    "careplan-version",
    "CarePlan",
    frozenset({PLAN_CATEGORY}),
    "dho-share/careplan.read",
    "a new version of the patient's CarePlan (created or changed)",
)
OBSERVATION_OUTSIDE_PLAN = Topic(
    "observation-outside-plan",
    "Observation",
    frozenset({VITAL_SIGNS_CATEGORY}),
    "dho-share/observation.read",
    "a new measurement of the patient outside the thresholds of the active plan",
)

TOPICS: Mapping[str, Topic] = {t.url: t for t in (CAREPLAN_VERSION, OBSERVATION_OUTSIDE_PLAN)}
"""Every topic, by canonical URL."""


def topic(url: str) -> Topic | None:
    return TOPICS.get(url)
