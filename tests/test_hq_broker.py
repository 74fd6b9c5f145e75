"""The head office broker as shipped (mosquitto/hq.conf.example, hq.acl.example, users
made with mosquitto_passwd), on loopback: a store's credentials publish under its own
id and never under another store's, and read nothing; anonymous clients and wrong
passwords are refused; `edge hq`'s shared subscription reads every store; what arrives
while no ingest runs waits in its persistent session, across a restart of the broker."""

from __future__ import annotations

import queue
import time

import pytest

from broker import Subscriber
from fleet import HqBroker, tls_client

USERS = {"store-a": "pw-a", "store-b": "pw-b", "edge-hq": "pw-hq"}
COUNTS = "edge/{}/cameras/door/counts"


@pytest.fixture()
def hq(tmp_path):
    broker = HqBroker(tmp_path / "hq", USERS).start()
    yield broker
    broker.stop()


def connect(hq: HqBroker, user: str | None, password: str | None = None):
    """A TLS client connected as `user`: (client, CONNACK reason). Stopped by the caller."""
    client = tls_client(hq, user, password)
    answers: queue.Queue = queue.Queue()
    client.on_connect = lambda c, u, flags, reason, props: answers.put(reason)
    client.on_connect_fail = lambda c, u: answers.put("failed")
    client.connect("127.0.0.1", hq.tls_port, keepalive=5)
    client.loop_start()
    return client, answers.get(timeout=10)


def test_a_store_writes_under_its_own_id_only(hq):
    ingest = Subscriber(hq.port, "$share/hq/edge/#", username="edge-hq", password="pw-hq")
    store_a, reason = connect(hq, "store-a", "pw-a")
    try:
        assert not reason.is_failure, reason
        for topic, payload in (
            (COUNTS.format("store-a"), b"own"),
            (COUNTS.format("store-b"), b"forged"),  # A's credentials, B's topic
            ("edge/store-b/availability", b"offline"),
            ("elsewhere/store-a", b"outside edge/"),
            (COUNTS.format("store-a"), b"marker"),
        ):
            # MQTT 3.1.1 (the bridges' protocol) acknowledges a denied publish too:
            # the broker drops it silently.
            store_a.publish(topic, payload, qos=1).wait_for_publish(timeout=5)
        # One connection, one order: had the forged ones been delivered, they would
        # have come before the marker.
        ingest.wait_for(lambda t, p, r: p == b"marker")
        assert [(t, p) for t, p, _ in ingest.seen] == [
            (COUNTS.format("store-a"), b"own"),
            (COUNTS.format("store-a"), b"marker"),
        ]
    finally:
        store_a.loop_stop()
        store_a.disconnect()
        ingest.close()


@pytest.mark.parametrize("user, password", [(None, None), ("store-a", "pw-b"), ("store-c", "pw-a")])
def test_anonymous_wrong_password_and_unknown_store_are_refused(hq, user, password):
    client, reason = connect(hq, user, password)
    client.loop_stop()
    assert reason != "failed" and reason.is_failure, reason  # CONNACK: not authorised


def test_ingest_reads_every_store_and_its_queue_waits_across_a_broker_restart(hq):
    """A persistent shared subscription, as `edge hq` holds: what the stores send while
    it is away is kept for it, on disk across the broker's restart (persistence)."""
    topic = "$share/hq/edge/+/cameras/+/counts"
    ingest = Subscriber(
        hq.port, topic, client_id="edge-hq-1", persistent=True, username="edge-hq", password="pw-hq"
    )
    ingest.close()  # away, its session kept
    for store, password in (("store-a", "pw-a"), ("store-b", "pw-b")):
        client, reason = connect(hq, store, password)
        assert not reason.is_failure, reason
        client.publish(COUNTS.format(store), store.encode(), qos=1).wait_for_publish(timeout=5)
        client.loop_stop()
        client.disconnect()
    hq.stop()  # a clean stop writes the persistence file
    hq.start()
    ingest = Subscriber(
        hq.port, topic, client_id="edge-hq-1", persistent=True, username="edge-hq", password="pw-hq"
    )
    try:
        ingest.wait_for(lambda t, p, r: p == b"store-a")
        ingest.wait_for(lambda t, p, r: p == b"store-b")
    finally:
        ingest.close()


def test_a_store_reads_nothing_at_head_office(hq):
    """Stores only send: a store's credentials (say, copied off a box) read none of the
    other stores' counts and plays, nor their own. Mosquitto grants the subscription
    and then delivers nothing the ACL does not let the user read."""
    ingest = Subscriber(hq.port, "edge/#", username="edge-hq", password="pw-hq")
    spy, reason = connect(hq, "store-a", "pw-a")
    store_b, reason_b = connect(hq, "store-b", "pw-b")
    try:
        assert not reason.is_failure and not reason_b.is_failure, (reason, reason_b)
        got: list = []
        subscribed: queue.Queue = queue.Queue()
        spy.on_message = lambda c, u, msg: got.append(msg.topic)
        spy.on_subscribe = lambda c, u, mid, reasons, props: subscribed.put(reasons)
        spy.subscribe([("edge/#", 1), ("$share/hq/edge/#", 1)])
        subscribed.get(timeout=5)
        spy.publish(COUNTS.format("store-a"), b"own", qos=1).wait_for_publish(timeout=5)
        store_b.publish(COUNTS.format("store-b"), b"b", qos=1).wait_for_publish(timeout=5)
        ingest.wait_for(lambda t, p, r: p == b"b")  # delivered: to the ingest only
        time.sleep(0.5)
        assert got == [] and len(ingest.seen) == 2
    finally:
        for client in (spy, store_b):
            client.loop_stop()
            client.disconnect()
        ingest.close()
