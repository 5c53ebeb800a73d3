"""REL-01: with Redis unreachable the replay checks (DPoP proofs, client assertions) fail closed, and the
service resumes by itself when Redis comes back (product.md §5: "Redis down: requests that need a replay
check or revocation check fail closed (503), never pass unchecked ... recover without a restart").

Each test runs its own ``redis-server`` on a free port, an app pointed at it, stops the server, and
starts it again on the same port. The app object is never rebuilt.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from auth.client import ASSERTION_TYPE, client_assertion
from auth.server import REVOCATION_PATH
from sharing_api.app import create_app
from sharing_api.fhir.identifiers import FNR
from sharing_api.settings import Settings
from tests.api_client import ApiClient
from tests.security.helpers import Probe, RedisServer, Scene, make_scene

pytestmark = pytest.mark.slow  # starts and stops redis-server processes

RECOVERY_SECONDS = 15


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def outage_app(settings: Settings, app: Flask, redis_server: RedisServer) -> Iterator[Flask]:
    """An app whose replay cache, revocation list and rate limits live in ``redis_server``."""
    second = create_app(settings.model_copy(update={"redis_url": redis_server.url}))
    yield second
    second.extensions["dho"].engine.dispose()


@pytest.fixture
def outage_scene(outage_app: Flask) -> Scene:
    services = outage_app.extensions["dho"]
    return make_scene(ApiClient(outage_app.test_client(), services), services)


def eventually(check: Callable[[], Any], seconds: float = RECOVERY_SECONDS) -> Any:
    """``check()`` until it returns something truthy; the last value otherwise."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def token_request(scene: Scene) -> Any:
    return scene.client.token_response(scene.client.parties["hospital"], patient=(FNR, scene.patient))


def assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert int(response.headers["Retry-After"]) >= 1


def test_rel_01_client_assertion_replay_check_fails_closed_and_recovers(
    outage_scene: Scene, redis_server: RedisServer
) -> None:
    redis_server.stop()
    for _ in range(3):
        response = token_request(outage_scene)
        assert_unavailable(response)
        assert response.get_json()["error"] == "temporarily_unavailable"
        assert "access_token" not in response.get_json()
    redis_server.start()
    recovered = eventually(lambda: token_request(outage_scene).status_code == 200)
    assert recovered, "the token endpoint did not recover by itself"


def test_rel_01_resource_fails_closed_and_recovers(outage_scene: Scene, redis_server: RedisServer) -> None:
    reader = outage_scene.read
    redis_server.stop()
    for _ in range(3):
        response = reader.send(reader.headers())
        assert_unavailable(response)
        reader.assert_refused(response, status=503)
    redis_server.start()
    assert eventually(lambda: reader.send(reader.headers()).status_code == 200), "no recovery"
    reader.assert_still_works()


def test_rel_01_dpop_replay_check_alone_fails_closed(
    outage_app: Flask, outage_scene: Scene, redis_server: RedisServer
) -> None:
    """With the revocation check answered elsewhere, the DPoP ``jti`` claim is the only Redis use on
    the request path: it must answer 503 too, never let the proof through unchecked."""
    services = outage_app.extensions["dho"]
    outage_app.extensions["dho"] = dataclasses.replace(
        services, guard=dataclasses.replace(services.guard, is_revoked=lambda jti: False)
    )
    reader = outage_scene.read
    headers = reader.headers()
    redis_server.stop()
    for _ in range(3):
        assert_unavailable(reader.send(headers))  # the same proof: it must not pass while unchecked
        reader.assert_refused(reader.send(reader.headers()), status=503)
    redis_server.start()
    assert eventually(lambda: reader.send(reader.headers()).status_code == 200), "no recovery"


def test_rel_01_write_is_not_stored_while_redis_is_down(
    outage_scene: Scene, redis_server: RedisServer
) -> None:
    write = outage_scene.write
    before = write.snapshot()
    redis_server.stop()
    response = write.send(write.headers())
    assert_unavailable(response)
    write.assert_refused(response, status=503, before=before)
    redis_server.start()
    assert eventually(lambda: write.send(write.headers()).status_code == 201)


def test_rel_01_proof_used_before_an_outage_is_not_accepted_again_after_recovery(
    outage_scene: Scene, redis_server: RedisServer
) -> None:
    reader = outage_scene.read
    headers = reader.headers()
    assert reader.send(headers).status_code == 200
    redis_server.stop()
    redis_server.start()
    assert eventually(lambda: reader.send(reader.headers()).status_code == 200)
    replay = reader.send(headers)
    assert replay.status_code != 200, "a proof was accepted twice across a Redis restart"


def test_rel_01_the_scene_talks_to_the_app_on_the_private_redis(
    outage_scene: Scene, outage_app: Flask, redis_server: RedisServer
) -> None:
    """Guard against testing the wrong app: the outage tests' requests go to the app on ``redis_server``."""
    probe: Probe = outage_scene.read
    assert probe.client.flask.application is outage_app
    assert outage_app.extensions["dho"].settings.redis_url == redis_server.url


def test_rel_01_revoked_token_stays_revoked_after_recovery(
    outage_scene: Scene, redis_server: RedisServer
) -> None:
    reader, client = outage_scene.read, outage_scene.client
    party = client.parties["hospital"]
    form = {
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(party.key, client_id=party.client_id, issuer=client.issuer),
        "token": reader.token,
    }
    assert client.flask.post(REVOCATION_PATH, data=form).status_code == 200
    assert reader.send(reader.headers()).status_code == 401
    redis_server.stop()
    redis_server.start()
    response = eventually(lambda: (r := reader.send(reader.headers())).status_code != 503 and r)
    assert response.status_code == 401, "a revoked token was accepted again after a Redis restart"
