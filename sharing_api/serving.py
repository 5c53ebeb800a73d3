"""Running the app: under granian (the default) or gunicorn, in several worker processes.

Both run the same WSGI app, one per worker process, built by the app factory in the worker. granian
(HTTP parsing and connections in Rust, hyper) spends less CPU per request than gunicorn's gthread worker
on this machine: 0.13-0.16 ms of server CPU per ``/healthz`` against 0.35-0.38, a full-chain search
2.70-2.75 ms against 3.27-3.69 (BENCHMARKS.md, "The HTTP server"). ``deploy/`` runs ``dho-share serve``,
so production gets exactly these settings; ``DHO_SERVER=gunicorn`` chooses gunicorn there.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
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
        return worker_app(self.settings)


def worker_app(settings: Settings) -> Any:
    """One worker's app, as either server builds it in the worker process: JSON log lines, then the
    app with ``settings``."""
    from sharing_api.app import create_app
    from sharing_api.request_log import configure_json_logging

    configure_json_logging()
    return create_app(settings)


SERVERS = ("granian", "gunicorn")
"""The HTTP servers ``serve`` can run the app under (``dho-share serve --server``), the default first."""

HEADER_BYTES = 16 * 1024
"""granian: the most a request line and its headers may take together; beyond it the request is answered
431 before the app sees it (hyper's read buffer; its smallest allowed is 8 KiB). gunicorn's own limits
are per line: 4,094 bytes for the request line, 8,190 for a header field, 100 fields."""

GRACE_SECONDS = 10
"""On SIGTERM, how long either server lets requests in flight finish before it kills the workers
(granian's ``workers_kill_timeout``, gunicorn's ``graceful_timeout``); granian closes its listening
socket at once (tests/deploy/test_shutdown.py)."""

HEADER_READ_MS = 30_000
"""granian (hyper): a client must send a request's line and headers within this; the connection is then
closed. The same timer closes a keep-alive connection idle this long, so a proxy must drop its idle
upstream connections sooner (deploy/nginx/dho-share.conf: ``keepalive_timeout 20s``), or it may send a
request on a connection the node is closing (nginx answers that 503: it never resends a request)."""

BACKLOG = 2048
"""granian: connections the kernel queues before the workers accept them; gunicorn's default, which
deploy/ had (granian's own is 1,024)."""


def serve(
    settings: Settings,
    host: str,
    port: int,
    workers: int,
    threads: int = 4,
    reuse_port: bool = False,
    server: str = SERVERS[0],
) -> None:
    """The app on ``host:port`` in ``workers`` processes of ``threads`` threads each, under ``server``.

    gunicorn (gthread workers): with ``reuse_port`` each worker opens its own listening socket with
    ``SO_REUSEPORT`` and the kernel spreads new connections over them (Linux admits only sockets of the
    same user to the group); without, the workers accept from one shared socket, and whichever is awake
    first takes the connection. granian: the workers share one socket (``reuse_port`` is refused)."""
    require_safe_bind(host, settings.base_url)
    if workers > 1 and not settings.redis_url:
        raise SystemExit(
            "several workers share search sessions through Redis: set DHO_REDIS_URL or use --workers 1"
        )
    if server not in SERVERS:
        raise SystemExit(f"unknown server {server!r}: one of {', '.join(SERVERS)}")
    if server == "granian" and reuse_port:
        raise SystemExit("--reuse-port is a gunicorn option; granian's workers share one socket")
    chosen = multiprocess_dir()
    directory = use_multiprocess_dir()
    try:
        if server == "granian":
            _granian(settings, host, port, workers, threads)
        else:
            _gunicorn(settings, host, port, workers, threads, reuse_port)
    finally:
        if chosen is None:  # the directory made for this run
            shutil.rmtree(directory, ignore_errors=True)


def _gunicorn(settings: Settings, host: str, port: int, workers: int, threads: int, reuse_port: bool) -> None:
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
            "graceful_timeout": GRACE_SECONDS,
        },
    ).run()


_settings_for_workers: Settings | None = None
"""The settings ``granian_app`` builds each worker's app with (set before the workers are forked)."""


def granian_app() -> Any:
    """granian's target (a factory), called in each worker process: the app with the settings ``serve``
    was given (or, in a worker started by ``spawn`` rather than ``fork``, from the environment)."""
    return worker_app(_settings_for_workers or Settings())


def require_free_port(host: str, port: int) -> None:
    """Refuse a port something already listens on. granian binds with ``SO_REUSEPORT``, so without this
    a second server on the port would start and silently take a share of the first one's connections.
    A plain bind (``SO_REUSEADDR`` only, as servers use) fails on any listener, theirs included."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"{host}:{port} is in use: {exc.strerror}") from exc


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals granian's workers stop gracefully on, once they serve (``granian/_signals.py``)."""


def stop_at_once_until_serving() -> None:
    """In a granian worker just forked: SIGTERM and SIGINT end it at once (the default action) until
    granian installs its graceful handlers, right before the worker serves.

    A forked worker inherits the main process's Python handler (it marks granian's *main* loop as
    interrupted) and keeps it while it loads the app, 1-3 s here (``create_app``: the engine, the
    migration check, Redis, the keys). A SIGTERM then sets a flag in the worker's copy of the main
    process that nothing reads: the worker starts serving as if never told to stop, and granian kills it
    only after the whole grace (``GRACE_SECONDS``). That was the stop that sometimes took 10 s: 17 of 93
    stops of a node stopped half a second after ``/readyz`` first answered (one ready worker answers it;
    tests stop nodes that soon); a second SIGTERM then stopped the worker within 20 ms.
    A worker still loading has no request to finish, so ending it at once loses nothing. Left: a signal
    in the microseconds between the fork and this hook still goes to the inherited handler."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_DFL)


_stop_hook_registered = False


def _register_stop_hook() -> None:
    """Run :func:`stop_at_once_until_serving` in every process this one forks (granian's workers, and
    the ones it respawns), as early as Python can: right after the fork, before the worker's first line
    of granian's code. Once per process (a fork hook cannot be removed). A worker started by ``spawn``
    rather than ``fork`` begins with the default handlers anyway."""
    global _stop_hook_registered
    if not _stop_hook_registered:
        os.register_at_fork(after_in_child=stop_at_once_until_serving)
        _stop_hook_registered = True


def _granian(settings: Settings, host: str, port: int, workers: int, threads: int) -> None:
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

    require_free_port(host, port)
    _register_stop_hook()
    global _settings_for_workers
    _settings_for_workers = settings
    Server(
        f"{__name__}:granian_app",
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=threads,
        backlog=BACKLOG,
        http1_settings=HTTP1Settings(header_read_timeout=HEADER_READ_MS, max_buffer_size=HEADER_BYTES),
        websockets=False,
        factory=True,
        # Warnings too, so that a stop that waited out the grace says so ("Killing worker-N after it refused
        # to gracefully stop"); granian's access log is a separate switch (off: the app writes one JSON
        # line per request), and its warnings name settings and workers, never a request.
        log_level=LogLevels.warning,
        respawn_failed_workers=True,  # as gunicorn's arbiter does (granian exits on a crash loop)
        workers_kill_timeout=GRACE_SECONDS,
    ).serve()
