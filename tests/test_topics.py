"""QoS and retain flags are declared once, in edge/outputs/topics.py: the publisher reads
them from there. Checked on a real Mosquitto with an MQTT v5 subscriber that keeps each
message's retain flag as published (retainAsPublished) at QoS 2, so the QoS and retain
flag it receives are those the publisher sent."""

import queue
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.subscribeoptions import SubscribeOptions
from test_mqtt import write_config

from edge import config as config_mod
from edge.events import CameraEvent, IntervalEvent, StatsEvent
from edge.outputs.topics import TOPICS, Topics
from edge.records import empty_counts


def test_every_topic_name_leads_back_to_its_entry():
    topics = Topics("edge", "store-1")
    for topic in TOPICS:
        assert topics.spec(topics.name(topic, camera="door", display="window")) is topic
    with pytest.raises(KeyError, match="no topic"):
        topics.spec("edge/store-1/cameras/door/unknown")
    with pytest.raises(KeyError):
        topics.spec("edge/another-store/availability")


@pytest.mark.broker
def test_the_publisher_sends_each_topic_with_the_tables_qos_and_retain(broker, tmp_path):
    from edge.outputs.publish import MqttPublisher

    path, root = write_config(tmp_path, broker.port, source="/dev/null", displays=False)
    config = config_mod.load(path)
    got: queue.Queue = queue.Queue()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    subscribed = queue.Queue()
    sub.on_connect = lambda c, u, f, r, p: c.subscribe(
        f"{root}/#", options=SubscribeOptions(qos=2, retainAsPublished=True)
    )
    sub.on_subscribe = lambda *args: subscribed.put(True)
    sub.on_message = lambda c, u, m: got.put((m.topic, m.qos, bool(m.retain)))
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    publisher = MqttPublisher(config)
    try:
        subscribed.get(timeout=10)
        publisher.start()
        deadline = time.monotonic() + 10
        while not publisher.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert publisher.connected
        publisher.emit(CameraEvent("door", "Door", True, None, 0))
        publisher.emit(
            IntervalEvent("door", "s", "e", empty_counts(), {}, 0, 0, 0.0, 0.0, segments={})
        )
        publisher.emit(StatsEvent("t", {}, None, None, None, None))
        seen: dict[str, tuple[int, bool]] = {}
        topics = Topics("edge", config.mqtt.store_id)
        deadline = time.monotonic() + 10
        while len(seen) < 4 and time.monotonic() < deadline:
            try:
                topic, qos, retain = got.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.setdefault(topic, (qos, retain))
        assert set(seen) == {
            topics.availability,
            topics.camera_status("door"),
            topics.camera_counts("door"),
            topics.stats,
        }, seen
        for topic, flags in seen.items():
            spec = topics.spec(topic)
            assert flags == (spec.qos, spec.retain), topic
    finally:
        publisher.close()
        sub.disconnect()
        sub.loop_stop()
