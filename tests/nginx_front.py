"""nginx on a free loopback port in front of API nodes (``dho-share serve``), configured with the
repository's own snippets (deploy/nginx/dho-server.conf, dho-proxy.conf) and the upstream block's
keep-alive settings of deploy/nginx/dho-share.conf, so tests prove the deployed settings."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from tests.live_server import free_port
from tests.prerequisites import require

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "nginx"


def upstream_keepalive() -> list[str]:
    """The ``keepalive*`` directives of the upstream block in deploy/nginx/dho-share.conf."""
    text = (DEPLOY / "dho-share.conf").read_text()
    block = text[text.index("upstream dho_share {") :].split("}", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("keepalive")]


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


class NginxFront:
    """``start()`` / ``stop()``; ``url`` is ``http://127.0.0.1:<port>``."""

    def __init__(self, upstreams: list[int], *, server_name: str = "127.0.0.1") -> None:
        binary = nginx_binary()
        require(binary, "nginx is not installed (apt-get install nginx-light)")
        assert binary is not None
        self.binary = binary
        self.upstreams = list(upstreams)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dho-nginx-"))
        servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in upstreams)
        keepalive = "\n".join(f"    {line}" for line in upstream_keepalive())
        user = "user root;\n" if os.geteuid() == 0 else ""
        (self.dir / "nginx.conf").write_text(
            f"""{user}worker_processes 1;
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path tmp-body; proxy_temp_path tmp-proxy; fastcgi_temp_path tmp-fcgi;
  uwsgi_temp_path tmp-uwsgi; scgi_temp_path tmp-scgi;
  upstream dho_share {{
{servers}
{keepalive}
  }}
  server {{
    listen 127.0.0.1:{self.port};
    server_name {server_name};
    include {DEPLOY / "dho-server.conf"};
    location / {{ include {DEPLOY / "dho-proxy.conf"}; }}
  }}
}}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> NginxFront:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(self.url + "/healthz", timeout=1)
                return self
            except requests.RequestException:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "error.log").read_text() if (self.dir / "error.log").exists() else ""
                    raise RuntimeError(f"nginx did not start: {log[-2000:]}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
