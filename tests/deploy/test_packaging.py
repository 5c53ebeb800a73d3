"""deploy/: the systemd unit, the Dockerfile and the compose file, checked as far as this machine can
(issue 9, "The operator"). Docker is not available here, so the image and compose file are checked
statically: the compose file parses, has PostgreSQL, Redis and the API, and passes the API only settings
the application knows; every file the Dockerfile copies exists and the commands it runs are ours."""

from __future__ import annotations

import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from sharing_api.settings import Settings
from tests.prerequisites import require

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
    """``DHO_*`` names the application reads: Settings fields, and what deploy/gunicorn.conf.py reads."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    fields = {f"{prefix}{name}".upper() for name in Settings.model_fields}
    gunicorn = set(
        re.findall(r"os\.environ\.get\(\"(DHO_[A-Z_]+)\"", (DEPLOY / "gunicorn.conf.py").read_text())
    )
    assert gunicorn, "deploy/gunicorn.conf.py reads DHO_BIND and DHO_WORKERS"
    return fields | gunicorn


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
    command = shlex.split(settings["ExecStart"])
    assert command[0] == f"{INSTALLED_AT}/.venv/bin/gunicorn"
    config = command[command.index("-c") + 1]
    assert (ROOT / Path(config).relative_to(INSTALLED_AT)).is_file()
    assert command[-1] == "sharing_api.wsgi:app"


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
    assert command[0] == "gunicorn"
    assert any(d.startswith("gunicorn") for d in pyproject["project"]["dependencies"])
    workdir = next(line.split()[1] for line in lines if line.startswith("WORKDIR "))
    in_image = {posixpath.normpath(posixpath.join(workdir, target)) for _, target in copied}
    assert command[command.index("-c") + 1] in in_image, "the gunicorn config is copied where CMD reads it"
    assert command[-1] == "sharing_api.wsgi:app"
    assert "dho-share" in pyproject["project"]["scripts"]  # the compose file's migration command
