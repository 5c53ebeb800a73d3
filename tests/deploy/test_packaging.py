"""deploy/: the systemd unit, the Dockerfile and the compose file, checked as far as this machine can
(issue 9, "The operator"). Docker is not available here, so the image and compose file are checked
statically: the compose file parses, has PostgreSQL, Redis and the API, and passes the API only settings
the application knows; every file the Dockerfile copies exists and the commands it runs are ours. The
unit's and the image's command, with their environment, are run: both serve under granian."""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import requests
import yaml

from sharing_api import cli, serving
from sharing_api.settings import Settings
from tests.api_nodes import wait_ready
from tests.live_server import free_port
from tests.nginx_front import upstream_keepalive
from tests.prerequisites import require
from tests.security.helpers import server_env

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "dho-share.service"
INSTALLED_AT = "/opt/dho-share"


def unit_entries() -> list[tuple[str, str]]:
    """(key, value) for every setting line of the unit (repeated keys such as Environment= kept)."""
    entries = []
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            entries.append((key.strip(), value.strip()))
    return entries


def known_variables() -> set[str]:
    """``DHO_*`` names the application reads: Settings fields, and the options of ``dho-share serve``
    that may come from the environment (DHO_BIND, DHO_WORKERS, DHO_THREADS, DHO_SERVER)."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    fields = {f"{prefix}{name}".upper() for name in Settings.model_fields}
    serve = {str(p.envvar) for p in cli.serve.params if p.envvar}
    assert {"DHO_BIND", "DHO_WORKERS", "DHO_SERVER"} <= serve
    return fields | serve


def image_environment() -> dict[str, str]:
    """The ``ENV`` of deploy/Dockerfile (one instruction, ``NAME=value`` continued over lines)."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    (env,) = [line.removeprefix("ENV ") for line in text.splitlines() if line.startswith("ENV ")]
    return dict(pair.split("=", 1) for pair in env.split())


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    require(analyze, "systemd-analyze (Debian package systemd) is not installed")
    # The unit as installed under /opt/dho-share, pointed at this checkout and its virtual environment.
    text = UNIT.read_text().replace(f"{INSTALLED_AT}/.venv/bin", str(Path(sys.executable).parent))
    local = tmp_path / UNIT.name
    local.write_text(text.replace(INSTALLED_AT, str(ROOT)))
    checked = subprocess.run([str(analyze), "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout + checked.stderr == ""


def test_systemd_unit_writes_only_where_it_may() -> None:
    """Under ProtectSystem=strict everything is read-only except the state directory (and
    ReadWritePaths): every file the service makes (keys, a SQLite database) must lie there."""
    entries = unit_entries()
    settings = dict(entries)
    assert settings["ProtectSystem"] == "strict"
    assert settings["UMask"] == "0077"
    writable = [f"/var/lib/{d}" for d in settings["StateDirectory"].split()]
    writable += settings.get("ReadWritePaths", "").split()
    environment = dict(v.split("=", 1) for k, v in entries if k == "Environment")
    assert set(environment) <= known_variables()
    written = [
        environment["DHO_SIGNING_KEYS_PATH"],
        environment["DHO_AUDIT_KEY_PATH"],
        environment["DHO_AUDIT_SELF_ACCESS_KEY_PATH"],
        environment["DHO_DATABASE_URL"].removeprefix("sqlite:///"),
    ]
    for path in written:
        assert any(Path(path).is_relative_to(w) for w in writable), f"{path} is read-only for the service"
    assert shlex.split(settings["ExecStart"]) == [f"{INSTALLED_AT}/.venv/bin/dho-share", "serve"]
    assert environment["DHO_SERVER"] == "granian"
    # SIGTERM to the main process only, which lets requests in flight finish, then stops its workers
    # (tests/deploy/test_shutdown.py); systemd's default would signal the workers at the same time.
    assert settings["KillMode"] == "mixed"
    assert "TimeoutStopSec" not in settings  # systemd's 90 s, well beyond serving.GRACE_SECONDS


def test_compose_file_runs_postgres_redis_and_the_api() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "api"} <= set(services)
    api = services["api"]
    environment = api["environment"]
    assert set(environment) <= known_variables()
    assert "@postgres:5432/" in environment["DHO_DATABASE_URL"]
    assert environment["DHO_REDIS_URL"].startswith("redis://redis:6379")
    assert all(str(p).startswith("127.0.0.1:") for p in api["ports"]), "published on the host's loopback only"
    # The image's keys live in the volume mounted at the directory the Dockerfile points them to.
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    keys = re.search(r"DHO_SIGNING_KEYS_PATH=(\S+)", dockerfile)
    assert keys is not None
    mounts = [str(v).split(":", 1)[1] for v in api["volumes"]]
    assert str(Path(keys.group(1)).parent) in mounts
    built = [s for s in services.values() if "build" in s]
    assert built, "the compose file builds the image"
    for service in built:
        context = (DEPLOY / service["build"]["context"]).resolve()
        assert context == ROOT
        assert (context / service["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    migrate = [s for s in built if s.get("command") == ["dho-share", "db", "upgrade"]]
    assert migrate, "migrations run before the API starts"
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # `docker compose stop` waits this long after SIGTERM before SIGKILL: longer than the API's grace.
    grace = api["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace.removesuffix("s")) > serving.GRACE_SECONDS


def test_dockerfile_copies_what_exists_and_runs_our_commands() -> None:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = []
    for line in lines:
        if line.startswith("COPY "):
            *sources, target = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the checkout"
                copied.append((source, target))
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= {Path(s).name for s, _ in copied}, "every package of the project is copied"
    cmd = next(line for line in lines if line.startswith("CMD "))
    command = yaml.safe_load(cmd.removeprefix("CMD "))  # the exec form is a JSON list
    assert command == ["dho-share", "serve"]
    assert "dho-share" in pyproject["project"]["scripts"]  # CMD and the compose file's migration command
    assert any(d.startswith("granian") for d in pyproject["project"]["dependencies"])
    assert image_environment()["DHO_SERVER"] == "granian"
    assert set(image_environment()) <= known_variables() | {"PYTHONUNBUFFERED"}
    workdir = next(line.split()[1] for line in lines if line.startswith("WORKDIR "))
    in_image = {posixpath.normpath(posixpath.join(workdir, target)) for _, target in copied}
    assert not any("/deploy/" in path for path in in_image), "the image runs no configuration file"


@pytest.mark.slow
@pytest.mark.parametrize("packaging", ["systemd unit", "image"])
def test_the_deployed_command_serves_under_granian(
    packaging: str, settings: Settings, tmp_path: Path
) -> None:
    """The unit's ExecStart and the image's CMD, with their own DHO_SERVER, answer under granian on the
    address DHO_BIND names (a free loopback port here)."""
    if packaging == "systemd unit":
        entries = unit_entries()
        environment = dict(v.split("=", 1) for k, v in entries if k == "Environment")
        command = shlex.split(dict(entries)["ExecStart"])
    else:
        lines = (DEPLOY / "Dockerfile").read_text().splitlines()
        environment = image_environment()
        command = yaml.safe_load(next(line for line in lines if line.startswith("CMD ")).removeprefix("CMD "))
    assert Path(command[0]).name == "dho-share"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DHO_SERVER": environment["DHO_SERVER"],
        **server_env(settings),
        "DHO_BIND": f"127.0.0.1:{port}",
        "DHO_PUBLIC_URL": base,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        node = subprocess.Popen(
            [sys.executable, "-m", "sharing_api.cli", *command[1:]], env=env, stdout=out, stderr=out
        )
    try:
        wait_ready(base, log)
        answer = requests.get(f"{base}/healthz", timeout=10)
        assert answer.status_code == 200
        assert answer.headers["server"] == "granian"
    finally:
        node.terminate()
        node.wait(timeout=30)


def test_nginx_drops_idle_upstream_connections_before_granian_does() -> None:
    """A request nginx sends on a keep-alive connection the node is just closing fails (and is never
    resent): nginx must drop idle upstream connections sooner than granian (HEADER_READ_MS)."""
    (timeout,) = [line for line in upstream_keepalive() if line.startswith("keepalive_timeout ")]
    seconds = timeout.removeprefix("keepalive_timeout ").rstrip(";")
    assert seconds.endswith("s")
    assert int(seconds.removesuffix("s")) * 1000 < serving.HEADER_READ_MS
