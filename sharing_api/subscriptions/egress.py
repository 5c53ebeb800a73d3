"""Where notifications may be sent: public addresses only, so a Subscription cannot point the service
at its own network (server-side request forgery).

A subscriber chooses the rest-hook endpoint; the delivery worker POSTs to it from inside the
deployment, next to PostgreSQL, Redis and the admin API. :class:`EgressPolicy` resolves the endpoint's
host just before each attempt and refuses it when any address it resolves to is not globally routable
(loopback, private, link-local, carrier-grade NAT, reserved, multicast, unspecified; IPv4-mapped IPv6
is judged as the IPv4 address) unless that address lies in a network the operator allowed
(``DHO_SUBSCRIPTION_ALLOWED_NETWORKS``, for example the health network's range) or is loopback and
``DHO_SUBSCRIPTION_HTTP_LOOPBACK`` is on (tests, development). A refused attempt fails closed: nothing
is sent, and the attempt is retried and audited like any failed delivery.

What it does not close: a name that resolves to a public address for this check and to a private one
for the connection a moment later (DNS rebinding). Deployments should also restrict the workers'
outbound traffic (docs/subscriptions.md).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from sharing_api.forwarded import IPAddress, IPNetwork

Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA)."""
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


class EgressPolicy:
    """:meth:`refusal` says why an endpoint may not be contacted now, or ``None``."""

    def __init__(
        self,
        *,
        allow_loopback: bool = False,
        networks: Sequence[IPNetwork] = (),
        resolver: Resolver = resolve,
    ):
        self.allow_loopback = allow_loopback
        self.networks = tuple(networks)
        self.resolver = resolver

    def address_refusal(self, text: str) -> str | None:
        """Why ``text`` (one IP address) is not a destination, or ``None`` when it is."""
        address: IPAddress = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.networks):
            return None
        if address.is_loopback:
            return None if self.allow_loopback else f"{address} is a loopback address"
        if not address.is_global or address.is_multicast:
            return f"{address} is not a public address"
        return None

    def refusal(self, endpoint: str) -> str | None:
        """Why ``endpoint`` may not be contacted (resolved now), or ``None``."""
        parts = urlsplit(endpoint)
        host = parts.hostname
        if not host:
            return "the endpoint has no host"
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            addresses = self.resolver(host, port)
        except (OSError, ValueError, UnicodeError) as exc:
            return f"{host} does not resolve ({type(exc).__name__})"
        if not addresses:
            return f"{host} does not resolve"
        for text in addresses:
            why = self.address_refusal(text)
            if why is not None:
                return f"{host}: {why}"
        return None

    def literal_refusal(self, endpoint: str) -> str | None:
        """Why an endpoint whose host is an IP address literal is refused, without resolving names."""
        host = urlsplit(endpoint).hostname or ""
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None  # a name: judged when resolved at delivery
        return self.address_refusal(host)
