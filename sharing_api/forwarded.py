"""The client's address behind trusted proxies (``DHO_TRUSTED_PROXIES``), for the audit log.

Behind nginx every request comes from the proxy, so the audit event's source address would name the
proxy. A proxy we run puts the address it saw in ``X-Forwarded-For``; anyone else can put anything
there. So the header is believed only when the immediate peer is a configured trusted proxy, and
then only as far as the chain is made of trusted proxies: walking ``X-Forwarded-For`` from the right
(the entry the trusted peer itself added), trusted addresses are skipped and the first untrusted one
is the client. A value that is not an IP address ends the walk at the last trusted hop (what we know
for sure), so a proxy's bad header never puts an arbitrary string into the audit log. Like werkzeug's
``ProxyFix``, but keyed on the peer's address instead of a count of hops.

Only ``REMOTE_ADDR`` is rewritten (the original kept under ``dho.peer_addr``); host, scheme and port
never come from forwarding headers (DPoP ``htu`` is checked against ``DHO_PUBLIC_URL``, DPOP-17).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(value: str | Iterable[str]) -> tuple[IPNetwork, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` (or a list of such strings) as networks; ``ValueError`` names a bad one."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    networks = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=True))
        except ValueError as exc:
            raise ValueError(f"not an IP network in CIDR notation: {part!r} ({exc})") from None
    return tuple(networks)


def _address(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> str | None:
    """The client's address: ``peer`` unless it is a trusted proxy, then the rightmost untrusted entry of
    ``forwarded_for`` (see the module doc)."""
    current = _address(peer)
    if current is None or not _trusted(current, trusted) or not forwarded_for:
        return peer
    for entry in reversed(forwarded_for.split(",")):
        hop = _address(entry)
        if hop is None:
            break
        current = hop
        if not _trusted(hop, trusted):
            break
    return str(current)


class TrustedProxies:
    """WSGI middleware: ``REMOTE_ADDR`` becomes :func:`client_address` of the request."""

    def __init__(self, app: Any, trusted: Sequence[IPNetwork]) -> None:
        self.app = app
        self.trusted = tuple(trusted)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        peer = environ.get("REMOTE_ADDR")
        environ["dho.peer_addr"] = peer
        address = client_address(peer, environ.get("HTTP_X_FORWARDED_FOR"), self.trusted)
        if address is not None:
            environ["REMOTE_ADDR"] = address
        return self.app(environ, start_response)
