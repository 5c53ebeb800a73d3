"""The composition root's product: every service a request needs, built once per app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from auth.ratelimit import RateLimiter
from auth.resource import ResourceGuard
from auth.server import TokenService
from sharing_api.access import AccessPolicy
from sharing_api.audit.log import AuditLog
from sharing_api.auditing import Auditor
from sharing_api.console.persons import PersonRegister
from sharing_api.publishing import Publisher
from sharing_api.searching import Searcher
from sharing_api.sessions import SearchSessions
from sharing_api.settings import Settings
from sharing_api.store.careplans import PlanStore
from sharing_api.store.clients import ClientRegistry
from sharing_api.store.observations import ObservationStore
from sharing_api.store.policy import PolicyStore
from sharing_api.store.tenants import TenantDirectory
from sharing_api.subscriptions.delivery import DeliveryWorker
from sharing_api.subscriptions.service import Notifications
from sharing_api.subscriptions.store import SubscriptionStore


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    engine: Engine
    tenants: TenantDirectory
    observations: ObservationStore
    sessions: SearchSessions
    publisher: Publisher
    searcher: Searcher
    redis_url: str | None
    clients: ClientRegistry
    token_service: TokenService
    guard: ResourceGuard
    rate_limiter: RateLimiter
    clock: Callable[[], float]
    policy: PolicyStore
    access: AccessPolicy
    audit_log: AuditLog
    auditor: Auditor
    subscriptions: SubscriptionStore
    notifications: Notifications
    delivery: DeliveryWorker
    plans: PlanStore
    person_register: PersonRegister | None = None
    """Patients' family names for log-control rule R9 (``DHO_PERSON_REGISTER``), read once; None: R9
    needs data (docs/console-rules.md)."""
    redis_client: Any = None  # the one client (standalone, Sentinel master or Cluster) every Redis use shares
