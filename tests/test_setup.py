"""Set-up (issue 9): a fresh clone with nothing beside it collects and runs the suite, reporting the
reference-data tests as skipped with the reason; under ``DHO_REQUIRE_ALL_TESTS`` (CI) they fail instead.
The package metadata builds without deprecation warnings and ``dho-share --version`` answers."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from sharing_api.cli import main
from tests.conftest import BACKENDS, POSTGRES_ADMIN, _postgres_database
from tests.prerequisites import STRICT_VARIABLE, require

CHECKOUT = Path(__file__).resolve().parents[1]
# The tests that read ../shared: at module level (the Merkle vectors) and through the shared_dir fixture.
REFERENCE_TESTS = [
    "tests/audit/test_merkle.py",
    "tests/api/test_examples.py",
    "tests/auth/test_attestation.py",
]


def _fresh_clone(into: Path) -> Path:
    """The tracked files of this checkout (as a clone would have them, with today's edits), alone in
    ``into``: no ``shared`` beside them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=CHECKOUT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    clone = into / "dho-share"
    for name in filter(None, listed):
        source = CHECKOUT / name.decode()
        if source.is_file():
            target = clone / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    assert not (into / "shared").exists()
    return clone


def _pytest(clone: Path, strict: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != STRICT_VARIABLE}
    env["DHO_TEST_BACKENDS"] = "sqlite"
    env["PYTHONPATH"] = str(clone)  # the clone's packages, not the checkout installed in the venv
    if strict:
        env[STRICT_VARIABLE] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-q",
            "-rsf",
            *REFERENCE_TESTS,
        ],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_a_fresh_clone_without_the_reference_pack_skips_those_tests_naming_why(tmp_path: Path) -> None:
    clone = _fresh_clone(tmp_path)
    local = _pytest(clone, strict=False)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "error" not in local.stdout.splitlines()[-1], local.stdout
    skipped = [line for line in local.stdout.splitlines() if line.startswith("SKIPPED")]
    for path in REFERENCE_TESTS:
        assert any(path in line for line in skipped), (path, local.stdout)
    assert all("reference pack" in line or "Merkle test vectors" in line for line in skipped), skipped
    assert " passed" in local.stdout.splitlines()[-1]  # everything else ran

    ci = _pytest(clone, strict=True)
    assert ci.returncode == 1, ci.stdout
    assert STRICT_VARIABLE in ci.stdout
    assert "skipped" not in ci.stdout.splitlines()[-1]


def test_the_installed_metadata_carries_an_spdx_license_expression() -> None:
    """``pip install .`` used to warn that ``project.license`` as a table is deprecated: the license is
    now a PEP 639 SPDX expression, which lands in the metadata as ``License-Expression``."""
    declared = tomllib.loads((CHECKOUT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["license"]
    assert isinstance(declared, str)
    assert importlib.metadata.metadata("dho-share")["License-Expression"] == declared


def test_version_option_prints_the_installed_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert importlib.metadata.version("dho-share") in result.output


def test_make_test_runs_the_suite_in_parallel_and_prints_the_slowest_tests() -> None:
    require(shutil.which("make"), "make is not installed")
    planned = subprocess.run(
        ["make", "-n", "test", f"BIN={Path(sys.executable).parent}"],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (pytest_line,) = [line for line in planned.splitlines() if " -m pytest" in line]
    words = pytest_line.split()
    assert "-n" in words, pytest_line  # pytest-xdist workers
    assert "--durations=10" in words, pytest_line


PARALLEL_PROBE = ["tests/test_sessions.py", "tests/api/test_tenancy.py"]


@pytest.mark.slow
def test_the_parallel_workers_keep_to_their_own_state(tmp_path: Path) -> None:
    """Two workers run the Redis-session contract and the SQL fixtures at once without disturbing
    each other (keys under a random prefix, a database per worker)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", *PARALLEL_PROBE],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 workers" in result.stdout, result.stdout


def test_the_longest_tests_are_scheduled_first(request: pytest.FixtureRequest) -> None:
    """``tests/conftest.py`` orders the collection so that every ``long``/``multinode`` test comes before
    every other one, and every ``slow`` one before the rest: under pytest-xdist none starts at the tail."""

    def weight(item: pytest.Item) -> int:
        if item.get_closest_marker("long") or item.get_closest_marker("multinode"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    weights = [weight(item) for item in request.session.items]
    assert weights == sorted(weights)
    if len(weights) > 1000:  # the whole suite was collected: the markers are where they should be
        names = {item.nodeid.split("[")[0] for item in request.session.items if weight(item) == 0}
        assert "tests/policy/test_stateful.py::test_reads_return_only_what_the_policy_permits" in names
        assert "tests/test_multinode.py::test_failovers_under_load" in names


@pytest.mark.skipif("postgresql" not in BACKENDS, reason="DHO_TEST_BACKENDS leaves PostgreSQL out")
def test_only_the_postgresql_test_databases_skip_the_commit_flush() -> None:
    """The per-run test databases commit without waiting for the WAL flush (a test-only economy, see
    ``_postgres_database``), set on each such database, never server-wide."""
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        gen = _postgres_database()
        url = next(gen)
        try:
            with psycopg.connect(url) as conn:
                assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
            name = url.rsplit("/", 1)[1]
            scoped = admin.execute(
                "SELECT s.setdatabase <> 0, d.datname FROM pg_db_role_setting s "
                "LEFT JOIN pg_database d ON d.oid = s.setdatabase "
                "WHERE array_to_string(s.setconfig, ',') LIKE '%%synchronous_commit%%'"
            ).fetchall()
        finally:
            gen.close()
    assert (True, name) in scoped
    assert all(per_database for per_database, _ in scoped)  # never a role-wide setting for every database
