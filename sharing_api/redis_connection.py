"""Redis clients from ``DHO_REDIS_URL``: one server, Sentinel, or Cluster (redis-py), failing fast.

Accepted URLs (issue 13 item 2; ``../shared/spec/scaleout.md`` §3):

* ``redis://[:password@]host:port/db`` (also ``rediss://``, ``unix://``): one server.
* ``redis+sentinel://[:password@]host:port[,host:port...]/<service>[/<db>]``: the master of
  ``<service>`` as the sentinels name it. Every command goes to the master (replay and revocation state
  are never read from replicas); after a failover the pool asks the sentinels again.
* ``redis+cluster://[:password@]host:port[,host:port...]``: Redis Cluster from these seed nodes.

Every client gets short socket timeouts and at most two retries with jittered backoff capped at
0.5 s, whatever the redis-py version's defaults (8.x retries 10 times): a request path fails closed
with 503 within about a second instead of hanging.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

SOCKET_TIMEOUT = 0.5
CONNECT_TIMEOUT = 0.3


def _retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2)


def _hosts(netloc: str) -> list[tuple[str, int]]:
    hosts = []
    for part in netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected host:port in the Redis URL, got {part!r}")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def _password(netloc: str) -> str | None:
    if "@" not in netloc:
        return None
    userinfo = netloc.rsplit("@", 1)[0]
    return unquote(userinfo.split(":", 1)[1]) if ":" in userinfo else unquote(userinfo)


def connect(url: str) -> Any:
    """A client for ``url`` (see the module doc); ``ValueError`` for a URL it does not understand."""
    parts = urlsplit(url)
    common: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "retry": _retry(),
    }
    if parts.scheme == "redis+sentinel":
        path = [p for p in parts.path.split("/") if p]
        if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
            raise ValueError(
                "redis+sentinel URLs name the service: redis+sentinel://h:p,h:p/<service>[/<db>]"
            )
        password = _password(parts.netloc)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            _hosts(parts.netloc),
            sentinel_kwargs={"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT},
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
        )
        return sentinel.master_for(  # type: ignore[no-untyped-call]
            path[0], db=int(path[1]) if len(path) == 2 else 0, password=password, **common
        )
    if parts.scheme == "redis+cluster":
        hosts = _hosts(parts.netloc)
        nodes = [ClusterNode(host, port) for host, port in hosts]  # type: ignore[no-untyped-call]
        options = parse_qs(parts.query)
        if options:
            raise ValueError(f"unknown option(s) in the cluster URL: {', '.join(sorted(options))}")
        return RedisCluster(startup_nodes=nodes, password=_password(parts.netloc), **common)
    if parts.scheme in ("redis", "rediss", "unix"):
        return redis.Redis.from_url(url, **common)
    raise ValueError(
        f"DHO_REDIS_URL scheme {parts.scheme!r} is not redis, rediss, unix, redis+sentinel or redis+cluster"
    )
