"""The auditor console in the browser (issue 10, console.md §5): log control, the per-patient disclosure
report, the integrity status and the log-control report, over the same service layer as the AuditEvent
API. ``install_console`` registers the blueprint (``views``) and its session store on an app."""

from __future__ import annotations

import redis
from flask import Flask

from sharing_api.settings import Settings

__all__ = ["install_console"]


def install_console(app: Flask, settings: Settings) -> None:
    from sharing_api.console.sessions import ConsoleSessions
    from sharing_api.console.views import bp

    client = None
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    app.extensions["dho_console_sessions"] = ConsoleSessions(client, settings.console_session_timeout)
    app.register_blueprint(bp)
