"""Running the app: under gunicorn (several workers) or, for one quick process, the same way."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from gunicorn.app.base import BaseApplication

from sharing_api.settings import Settings


def require_loopback(host: str) -> None:
    """Refuse to listen beyond this machine until callers must authenticate (issue #3 lands).

    Fail closed: a name that does not resolve, or resolves to any non-loopback address, is refused.
    """
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise SystemExit(f"cannot resolve listen address {host!r}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not address.is_loopback:
            raise SystemExit(
                f"refusing to listen on {host} ({address}): without client authentication this server "
                "listens on loopback only (127.0.0.1 or ::1)"
            )


class GunicornApp(BaseApplication):  # type: ignore[misc]
    """gunicorn with our app factory; each worker builds its own app (and database pool)."""

    def __init__(self, settings: Settings, options: dict[str, Any]):
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from sharing_api.app import create_app

        return create_app(self.settings)


def serve(settings: Settings, host: str, port: int, workers: int, threads: int = 4) -> None:
    require_loopback(host)
    if workers > 1 and not settings.redis_url:
        raise SystemExit(
            "several workers share search sessions through Redis: set DHO_REDIS_URL or use --workers 1"
        )
    GunicornApp(
        settings,
        {
            "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread",
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "graceful_timeout": 5,
        },
    ).run()
