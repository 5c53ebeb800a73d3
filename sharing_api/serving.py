"""Running the app: under gunicorn (several workers) or, for one quick process, the same way."""

from __future__ import annotations

import ipaddress
import shutil
import socket
from typing import Any

from gunicorn.app.base import BaseApplication

from sharing_api.metrics import multiprocess_dir, use_multiprocess_dir, worker_exited
from sharing_api.settings import Settings


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback address (fail closed: unresolvable is not)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]).is_loopback for info in infos)


def require_safe_bind(host: str, public_url: str) -> None:
    """Beyond loopback, the API is reached through TLS: refuse to listen on a network interface while the
    configured public URL (which DPoP ``htu`` and every link use) is plain ``http``. Behind a TLS-terminating
    load balancer, set ``DHO_PUBLIC_URL`` to its ``https://`` address."""
    if not is_loopback(host) and not public_url.startswith("https://"):
        raise SystemExit(
            f"refusing to listen on {host} with DHO_PUBLIC_URL={public_url}: beyond loopback the API is "
            "served over TLS; set DHO_PUBLIC_URL to the https:// address clients use"
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
        from sharing_api.request_log import configure_json_logging

        configure_json_logging()
        return create_app(self.settings)


def serve(
    settings: Settings, host: str, port: int, workers: int, threads: int = 4, reuse_port: bool = False
) -> None:
    """gunicorn's gthread workers on ``host:port``. With ``reuse_port`` each worker opens its own listening
    socket with ``SO_REUSEPORT`` and the kernel spreads new connections over them (Linux admits only
    sockets of the same user to the group); without, the workers accept from one shared socket, and
    whichever is awake first takes the connection."""
    require_safe_bind(host, settings.base_url)
    if workers > 1 and not settings.redis_url:
        raise SystemExit(
            "several workers share search sessions through Redis: set DHO_REDIS_URL or use --workers 1"
        )
    chosen = multiprocess_dir()
    directory = use_multiprocess_dir()
    GunicornApp(
        settings,
        {
            "child_exit": worker_exited,
            "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread",
            "reuse_port": reuse_port,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "error",  # gunicorn warns with whole header lines, tokens included
            "graceful_timeout": 5,
        },
    ).run()
    if chosen is None:  # the directory made for this run
        shutil.rmtree(directory, ignore_errors=True)
