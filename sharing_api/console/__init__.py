"""The auditor console in the browser (issue 10, console.md §5): log control, the per-patient disclosure
report, the integrity status and the log-control report, over the same service layer as the AuditEvent
API. ``install_console`` registers the blueprint (``views``) and its session store on an app."""

from __future__ import annotations

from typing import Any

from flask import Flask

from sharing_api.settings import Settings

__all__ = ["install_console"]


def install_console(app: Flask, settings: Settings, redis_client: Any) -> None:
    """Register the console. ``redis_client`` is the app's one Redis client (standalone, Sentinel
    master or Cluster; ``None`` without Redis), so login sessions follow a failover like the rest."""
    from sharing_api.console.lockout import LoginGuard
    from sharing_api.console.sessions import ConsoleSessions
    from sharing_api.console.views import bp

    app.extensions["dho_console_sessions"] = ConsoleSessions(redis_client, settings.console_session_timeout)
    app.extensions["dho_console_login_guard"] = LoginGuard(
        redis_client,
        scope=settings.database_url,
        per_account=settings.console_login_failures,
        per_address=settings.console_login_address_failures,
        window_seconds=settings.console_login_window,
    )
    app.register_blueprint(bp)
