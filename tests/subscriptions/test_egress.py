"""No server-side request forgery through a Subscription: the delivery worker contacts public addresses
only, unless the operator allowed a network (or loopback, for tests), and refuses literal private
addresses when the Subscription is created. Both databases for the HTTP parts."""

from __future__ import annotations

import ipaddress
import time

import pytest

from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.services import Services
from sharing_api.subscriptions.egress import EgressPolicy
from tests.api_client import ApiClient, Party
from tests.conftest import TENANT_A
from tests.factories import fnr
from tests.subscriptions import receiver as loopback
from tests.subscriptions import test_subscriptions as end_to_end
from tests.subscriptions.test_subscriptions import THRESHOLD, notify_events, publish, subscribe, subscription

# The end-to-end module's fixtures: loopback allowed, a follower, a receiver, the injected plan.
settings, follower, receiver, plan = (
    end_to_end.settings,
    end_to_end.follower,
    end_to_end.receiver,
    end_to_end.plan,
)

# Each class of destination the stdlib's address registry calls non-global, one address of each.
NOT_PUBLIC = [
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "fd00::1",
    "fe80::1",
    "::ffff:10.1.2.3",  # IPv4-mapped: judged as the IPv4 address
    "224.0.0.1",
]
PUBLIC = ["8.8.8.8", "2001:4860:4860::8888", "::ffff:8.8.8.8"]


def _resolving_to(*addresses: str) -> EgressPolicy:
    return EgressPolicy(resolver=lambda host, port: list(addresses))


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_an_endpoint_resolving_to_a_non_public_address_is_refused(address: str) -> None:
    why = _resolving_to(address).refusal("https://hooks.example.test/dho")
    assert why is not None
    assert "hooks.example.test" in why


@pytest.mark.parametrize("address", PUBLIC)
def test_an_endpoint_resolving_to_public_addresses_only_is_allowed(address: str) -> None:
    assert _resolving_to(address).refusal("https://hooks.example.test/dho") is None


def test_one_private_address_among_public_ones_is_enough_to_refuse() -> None:
    assert _resolving_to("8.8.8.8", "10.0.0.5").refusal("https://hooks.example.test/dho") is not None


def test_loopback_only_when_allowed_and_allowed_networks_only_for_themselves() -> None:
    assert _resolving_to("127.0.0.1").refusal("http://localhost:8080/") is not None
    allowed = EgressPolicy(allow_loopback=True, resolver=lambda host, port: ["127.0.0.1", "::1"])
    assert allowed.refusal("http://localhost:8080/") is None
    health_net = EgressPolicy(
        networks=[ipaddress.ip_network("10.20.0.0/16")], resolver=lambda host, port: ["10.20.1.1"]
    )
    assert health_net.refusal("https://epj.helsenett.test/") is None
    assert health_net.address_refusal("10.21.1.1") is not None


def test_a_name_that_does_not_resolve_is_refused() -> None:
    def fail(host: str, port: int) -> list[str]:
        raise OSError("no such name")

    assert EgressPolicy(resolver=fail).refusal("https://nowhere.example.test/") is not None


def test_a_literal_private_address_is_refused_when_subscribing(
    client: ApiClient, services: Services, follower: Party
) -> None:
    services.delivery.sender.egress = EgressPolicy()  # as in production: loopback not allowed either
    patient = fnr()
    for endpoint in ("https://169.254.169.254/latest", "https://[::1]:8443/hook", "https://10.0.0.7/hook"):
        refused = subscribe(client, follower, patient, subscription(patient, endpoint))
        assert refused.status_code == 400, endpoint
        issue = refused.get_json()["issue"][0]
        assert issue["expression"] == ["Subscription.channel.endpoint"]
    assert services.subscriptions.of_consumer(TENANT_A, follower.orgnr) == []


def test_delivery_to_a_name_that_now_resolves_privately_is_not_sent_and_is_audited(
    client: ApiClient, services: Services, follower: Party, receiver: loopback.Receiver
) -> None:
    patient = fnr()
    assert subscribe(client, follower, patient, subscription(patient, receiver.endpoint)).status_code == 201
    publish(client, patient, THRESHOLD + 10)
    services.delivery.sender.egress = _resolving_to("10.9.8.7")  # the name moved into a private network
    assert services.delivery.step(time.time()) == 1
    assert receiver.received == []
    assert notify_events(services, patient) == [(AuditAction.SUBSCRIPTION_NOTIFY, Outcome.MINOR_FAILURE)]
