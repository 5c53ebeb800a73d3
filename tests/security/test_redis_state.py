"""Replay state in Redis under failover, replica acknowledgement, Sentinel and Cluster URLs, and the one
Redis round trip per request (issue 13 items 1-2, issue 12; auth/replaystate.py).

Every test starts its own ``redis-server`` processes on free loopback ports and stops them afterwards.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from auth.client import ASSERTION_TYPE, client_assertion
from auth.server import REVOCATION_PATH
from sharing_api.app import create_app
from sharing_api.settings import Settings
from sharing_api.store.schema import observations, revoked_tokens
from tests.api_client import ApiClient
from tests.conftest import TENANT_A
from tests.factories import heart_rate
from tests.live_server import free_port
from tests.policy.helpers import PUBLIC, link, search
from tests.prerequisites import require
from tests.redis_nodes import Node, eventually
from tests.security.helpers import BASE, Scene, make_scene

pytestmark = pytest.mark.slow  # starts redis-server processes

RECOVERY_SECONDS = 30


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in reversed(started):
        node.stop()


_APPS: list[Flask] = []


@pytest.fixture(autouse=True)
def _dispose_apps() -> Iterator[None]:
    """Close every app's database pool at the end of its test (no connection left to the GC)."""
    yield
    while _APPS:
        _APPS.pop().extensions["dho"].engine.dispose()


def app_on(settings: Settings, url: str, **changes: Any) -> tuple[Flask, Scene]:
    app = create_app(settings.model_copy(update={"redis_url": url, **changes}))
    _APPS.append(app)
    services = app.extensions["dho"]
    return app, make_scene(ApiClient(app.test_client(), services), services)


def assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert int(response.headers["Retry-After"]) >= 1


def reads_processed(node: Node) -> int:
    return int(node.client.info("stats")["total_reads_processed"])


def test_one_redis_round_trip_per_request(
    settings: Settings, app: Flask, nodes: list[Node], tmp_path: Path
) -> None:
    """Issue 12: revocation check, proof ``jti`` claim and rate limit cost one Redis round trip."""
    node = Node(tmp_path, [])
    nodes.append(node)
    _, scene = app_on(settings, f"redis://127.0.0.1:{node.port}/0")
    reader = scene.read
    assert reader.send(reader.headers()).status_code == 200  # warms the pool and the script cache
    headers = reader.headers()
    before = reads_processed(node)
    assert reader.send(headers).status_code == 200
    after = reads_processed(node)
    assert after - before - 1 == 1  # one for the request; one for our own INFO call
    assert reader.send(headers).status_code == 401  # and that one trip did claim the proof


def test_one_redis_round_trip_per_token(
    settings: Settings, app: Flask, nodes: list[Node], tmp_path: Path
) -> None:
    """Issue 12: the client assertion's and the DPoP proof's ``jti`` are claimed in one round trip."""
    node = Node(tmp_path, [])
    nodes.append(node)
    _, scene = app_on(settings, f"redis://127.0.0.1:{node.port}/0")
    hospital = scene.client.parties["hospital"]
    assert scene.client.token_response(hospital).status_code == 200  # warms the pool and the scripts
    before = reads_processed(node)
    assert scene.client.token_response(hospital).status_code == 200
    after = reads_processed(node)
    assert after - before - 1 == 1  # one for the token; one for our own INFO call


def test_claim_without_replica_acknowledgement_is_refused(
    settings: Settings, app: Flask, nodes: list[Node], tmp_path: Path
) -> None:
    """Issue 13 item 2: with ``DHO_REDIS_REPLICA_ACKS=1`` a claim no replica acknowledged does not count
    (503, the client retries with a fresh proof); once a replica is linked the same setup serves."""
    master = Node(tmp_path, [])
    replica = Node(tmp_path, [f"replicaof 127.0.0.1 {master.port}"])
    nodes.extend([master, replica])
    linked = lambda: replica.client.info("replication")["master_link_status"] == "up"  # noqa: E731
    assert eventually(linked)
    _, scene = app_on(
        settings, f"redis://127.0.0.1:{master.port}/0", redis_replica_acks=1, redis_wait_ms=1000
    )
    reader = scene.read
    assert reader.send(reader.headers()).status_code == 200
    replica.client.replicaof("NO", "ONE")  # the master has no replica any more
    for _ in range(2):
        assert_unavailable(reader.send(reader.headers()))
    assert_unavailable(scene.client.token_response(scene.client.parties["hospital"]))
    replica.client.replicaof("127.0.0.1", master.port)
    assert eventually(linked)
    assert eventually(lambda: reader.send(reader.headers()).status_code == 200)
    assert scene.client.token_response(scene.client.parties["hospital"]).status_code == 200


def test_sentinel_failover_that_loses_a_claim_never_readmits_the_proof(
    settings: Settings, app: Flask, nodes: list[Node], tmp_path: Path
) -> None:
    """Issue 13 items 1-2: through ``redis+sentinel://``, a master that acknowledged a claim no replica
    received (fault injected: replica frozen, replication link cut) is killed and the replica promoted.
    The claim is gone from the new master, yet the proof is not accepted again (epoch rule), revocations
    are back, and DPoP nonces issued before the failover are refused after it."""
    master = Node(tmp_path, [])
    replica = Node(tmp_path, [f"replicaof 127.0.0.1 {master.port}"])
    nodes.extend([master, replica])
    assert eventually(lambda: replica.client.info("replication")["master_link_status"] == "up")
    sentinel = Node(
        tmp_path,
        [
            f"sentinel monitor dho 127.0.0.1 {master.port} 1",
            "sentinel down-after-milliseconds dho 2000",
            "sentinel failover-timeout dho 10000",
        ],
        sentinel=True,
    )
    nodes.append(sentinel)
    assert eventually(lambda: int(sentinel.client.sentinel_master("dho")["num-slaves"]) == 1)

    app2, scene = app_on(settings, f"redis+sentinel://127.0.0.1:{sentinel.port}/dho", dpop_nonce=False)
    reader, client = scene.read, scene.client
    assert reader.send(reader.headers()).status_code == 200
    revoked = scene.probe("read").mint()
    form = {
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(
            client.parties["hospital"].key,
            client_id=client.parties["hospital"].client_id,
            issuer=client.issuer,
        ),
        "token": revoked,
    }
    assert client.flask.post(REVOCATION_PATH, data=form).status_code == 200
    services = app2.extensions["dho"]
    with services.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(revoked_tokens)).scalar() == 1
    generation_before = services.guard.state.generation

    # Partition: freeze the replica and cut the replication link; the master keeps acknowledging.
    replica.signal(signal.SIGSTOP)
    master.client.client_kill_filter(_type="replica")
    used = reader.headers()
    assert reader.send(used).status_code == 200
    claims_on_master = len(list(master.client.scan_iter(match="{dho}:replay:*")))
    master.signal(signal.SIGKILL)
    master.proc.wait()  # gone for good before the replica may reconnect to it
    replica.signal(signal.SIGCONT)

    started = time.monotonic()
    promoted = eventually(
        lambda: sentinel.client.sentinel_get_master_addr_by_name("dho")[1] == replica.port, 60
    )
    assert promoted, "sentinel did not promote the replica"
    # Counted before any request reaches the new master (each success adds a claim).
    assert len(list(replica.client.scan_iter(match="{dho}:replay:*"))) < claims_on_master, (
        "fault injection failed: the promoted replica has every claim, so a loss would not show"
    )
    assert eventually(lambda: reader.send(reader.headers()).status_code == 200, 60), "no recovery"
    print(f"recovered {time.monotonic() - started:.1f} s after the master was killed")
    assert reader.send(used).status_code != 200, "a proof was accepted twice across a failover"
    assert reader.send_with(revoked).status_code == 401, "a revoked token works again after a failover"
    assert services.guard.state.generation != generation_before, "the epoch (and nonces) did not rotate"


def test_nonces_rotate_when_redis_restarts_empty(
    settings: Settings, app: Flask, nodes: list[Node], tmp_path: Path
) -> None:
    """Issue 13 item 1: a DPoP nonce issued before Redis restarted empty is refused after it."""
    node = Node(tmp_path, [])
    nodes.append(node)
    app2 = create_app(
        settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{node.port}/0", "dpop_nonce": True})
    )
    _APPS.append(app2)
    services = app2.extensions["dho"]
    services.guard.state.admit()  # the first request of this deployment begins its first epoch
    nonce = services.guard.nonce.issue(time.time())
    assert services.guard.nonce.check(nonce, time.time())
    node.stop()
    nodes.remove(node)
    nodes.append(Node(tmp_path, [], port=node.port))
    assert eventually(lambda: _admitted(services))
    assert not services.guard.nonce.check(nonce, time.time()), "a nonce survived a Redis reset"
    assert services.guard.nonce.check(services.guard.nonce.issue(time.time()), time.time())


def _admitted(services: Any) -> bool:
    try:
        services.guard.state.admit()
    except Exception:
        return False
    return True


def test_cluster_url_serves_refuses_replays_and_pages(
    settings: Settings, app: Flask, nodes: list[Node], tmp_path: Path
) -> None:
    """Issue 13 item 2: ``redis+cluster://`` works end to end; all request-state keys share one slot;
    a search pages through every match by ``next`` links whose cursors live in the cluster (one key
    per cursor, wherever its slot is)."""
    require(shutil.which("redis-cli"), "redis-cli is not installed")
    # cluster-port: the default bus port (port + 10000) may be taken, or beyond 65535 for a high free port.
    masters = [
        Node(tmp_path, ["cluster-enabled yes", "cluster-node-timeout 5000", f"cluster-port {free_port()}"])
        for _ in range(3)
    ]
    nodes.extend(masters)
    subprocess.run(
        ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in masters], "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert eventually(lambda: all(n.client.cluster("info")["cluster_state"] == "ok" for n in masters))
    seeds = ",".join(f"127.0.0.1:{n.port}" for n in masters[:2])
    _, scene = app_on(settings, f"redis+cluster://{seeds}")
    reader = scene.read
    headers = reader.headers()
    assert reader.send(headers).status_code == 200
    assert reader.send(headers).status_code == 401
    holders = [n for n in masters if any(n.client.scan_iter(match="*{dho}*", count=1000))]
    assert len(holders) == 1, "the request-state keys are spread over several nodes (one slot expected)"

    for n in range(4):
        extra = heart_rate(scene.patient, identifier=f"cluster-page-{n}")
        assert scene.client.post(f"{BASE}/Observation", json=extra).status_code == 201
    with scene.services.engine.connect() as conn:
        expected = {
            str(i)
            for (i,) in conn.execute(
                select(observations.c.id).where(
                    observations.c.tenant == TENANT_A, observations.c.patient_value == scene.patient
                )
            )
        }
    assert len(expected) == 5
    page = search(scene.client, scene.patient, form={"_count": "2"})
    seen: list[str] = []
    while True:
        assert page.status_code == 200, page.get_json()
        bundle = page.get_json()
        assert bundle["total"] == len(expected)
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        next_url = link(bundle, "next")
        if next_url is None:
            break
        page = scene.client.get(next_url.removeprefix(PUBLIC), patient=scene.patient)
    assert sorted(seen) == sorted(expected), "paging on the cluster lost or repeated a match"
    # The cursors are sealed (sharing_api/cursors.py): what the cluster holds is their key, which every
    # worker and node reads from it, not a record per page.
    keys = [k for n in masters for k in n.client.scan_iter(match="dho:cursor-key:*", count=1000)]
    assert len(keys) >= 1, "the paging cursors' key is not held by the cluster"


def test_a_flushed_redis_is_a_reset_too(
    settings: Settings, app: Flask, nodes: list[Node], tmp_path: Path
) -> None:
    """Same server (same run_id), state gone: a used proof is still never accepted again."""
    node = Node(tmp_path, [])
    nodes.append(node)
    _, scene = app_on(settings, f"redis://127.0.0.1:{node.port}/0")
    reader = scene.read
    used = reader.headers()
    assert reader.send(used).status_code == 200
    node.client.flushall()
    assert eventually(lambda: reader.send(reader.headers()).status_code == 200)
    assert reader.send(used).status_code != 200, "a proof was accepted twice after FLUSHALL"
