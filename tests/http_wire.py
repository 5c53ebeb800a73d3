"""Raw HTTP/1.1 on a socket, for tests about connections rather than requests (keep-alive after a 413,
slow clients): what a library client would hide (reuse, closing, partial headers) stays visible."""

from __future__ import annotations

import socket


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes] | None:
    """One response from ``sock``: status, headers (lower-case names), body; ``None`` if the server
    closed the connection before sending anything."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            if data:
                raise AssertionError(f"the connection closed inside a response head: {data[:200]!r}")
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("the connection closed inside a response body")
        body += chunk
    return status, headers, body[:length]


def chunked(body: bytes, size: int = 1000) -> bytes:
    parts = [
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def next_request_or_close(sock: socket.socket, host: str) -> tuple[int, dict[str, str], bytes] | None:
    """Send ``GET /healthz`` on ``sock``: its response, or ``None`` if the server had closed it."""
    try:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return read_response(sock)
    except (ConnectionResetError, BrokenPipeError):
        return None
