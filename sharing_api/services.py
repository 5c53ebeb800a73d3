"""The composition root's product: every service a request needs, built once per app."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from sharing_api.publishing import Publisher
from sharing_api.searching import Searcher
from sharing_api.sessions import SearchSessions
from sharing_api.settings import Settings
from sharing_api.store.observations import ObservationStore
from sharing_api.store.tenants import TenantDirectory


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
