"""Home Assistant MQTT discovery: the box announces itself as one device whose sensors
read the service's own retained topics (topics.py), so nobody writes sensor YAML.

Each entity is a retained config message under
`<prefix>/<component>/<node_id>/<object_id>/config` (Home Assistant's discovery
schema, full key names), sent on every connect. The sensors' `value_template`s pick
the numbers out of the payloads the service publishes anyway; nothing new is published
for Home Assistant and no per-person data is involved.

Stale configs (a camera or display removed from the config, or discovery turned off)
are found by subscribing to this box's own discovery topics at connect: the broker
answers with every config it retains for the box, and any that this run would not
publish is cleared with an empty retained message. Asking the broker, rather than
keeping a list in state_dir, also clears configs that a lost or reset state_dir, or
another install of the same store id, left behind: the broker is what Home Assistant
reads, so it is what has to be cleaned.
"""

from __future__ import annotations

import json
import logging

from edge import __version__
from edge.config import Config
from edge.outputs.topics import Topics
from edge.records import AGE_CLASSES, GENDERS

log = logging.getLogger(__name__)

ORIGIN = {"name": "edge-displays", "sw_version": __version__}


def node_id(config: Config) -> str:
    """The box's node id in discovery topics: its topic root, levels joined by -."""
    return f"{config.mqtt.topic_prefix}/{config.mqtt.store_id}".replace("/", "-")


def discovery_configs(config: Config) -> dict[str, dict]:
    """Discovery topic -> config payload for every entity of this box, in a stable order.

    unique_ids are the box's topic root plus the camera or display id and the entity's
    kind, joined by / (which ids cannot contain): stable across restarts, and unique
    for every store and id. Object ids are `<kind>_<id>` with kinds free of _, so
    they cannot collide either.
    """
    mqtt = config.mqtt
    topics = Topics(mqtt.topic_prefix, mqtt.store_id)
    node = node_id(config)
    device = {
        "identifiers": [topics.root],
        "name": f"Edge {mqtt.store_id}",
        "model": "Smart display audience service",
        "manufacturer": "edge-displays",
        "sw_version": __version__,
    }
    common = {
        "availability": [
            {
                "topic": topics.availability,
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ],
        "device": device,
        "origin": ORIGIN,
        "qos": 1,
    }
    out: dict[str, dict] = {}

    def add(component: str, kind: str, owner: str, owner_id: str, **entity) -> None:
        topic = f"{mqtt.home_assistant.prefix}/{component}/{node}/{kind}_{owner_id}/config"
        out[topic] = {**entity, "unique_id": f"{topics.root}/{owner}/{owner_id}/{kind}", **common}

    people = {"unit_of_measurement": "people", "state_class": "measurement"}
    for cam in config.cameras:
        name = cam.name or cam.id
        audience = topics.camera_audience(cam.id)
        add(
            "sensor",
            "present",
            "camera",
            cam.id,
            name=f"{name} people present",
            state_topic=audience,
            value_template="{{ value_json.present }}",
            icon="mdi:account-group",
            **people,
        )
        add(
            "sensor",
            "watching",
            "camera",
            cam.id,
            name=f"{name} watching now",
            state_topic=audience,
            value_template="{{ value_json.watching }}",
            icon="mdi:eye",
            **people,
        )
        for age_class in AGE_CLASSES:
            for gender in GENDERS:
                add(
                    "sensor",
                    f"{age_class}-{gender}",
                    "camera",
                    cam.id,
                    name=f"{name} present {age_class} {gender}",
                    state_topic=audience,
                    value_template=f"{{{{ value_json.counts.{age_class}.{gender} }}}}",
                    icon="mdi:account",
                    **people,
                )
        counts = topics.camera_counts(cam.id)
        add(
            "sensor",
            "visitors",
            "camera",
            cam.id,
            name=f"{name} visitors last interval",
            state_topic=counts,
            value_template=visitors_template(),
            json_attributes_topic=counts,
            json_attributes_template="{{ {'start': value_json.start, 'end': value_json.end, "
            "'watchers': value_json.watchers, 'unclassified': "
            "value_json.unclassified, 'unique_visitors': "
            "value_json.unique_visitors, 'gender_unknown': "
            "value_json.gender_unknown} | tojson }}",
            icon="mdi:account-multiple-check",
            **people,
        )
        status = topics.camera_status(cam.id)
        add(
            "binary_sensor",
            "online",
            "camera",
            cam.id,
            name=f"{name} camera online",
            state_topic=status,
            value_template="{{ 'ON' if value_json.online else 'OFF' }}",
            payload_on="ON",
            payload_off="OFF",
            device_class="connectivity",
            entity_category="diagnostic",
            json_attributes_topic=status,
            json_attributes_template="{{ {'error': value_json.error, 'reconnects_last_hour': "
            "value_json.reconnects_last_hour} | tojson }}",
        )
    for display in config.displays:
        content = topics.display_content(display.id)
        add(
            "sensor",
            "ad",
            "display",
            display.id,
            name=f"{display.name or display.id} ad",
            state_topic=content,
            value_template="{{ value_json.ad }}",
            json_attributes_topic=content,
            json_attributes_template="{{ {'title': value_json.title, 'creative': "
            "value_json.creative, 'duration_s': value_json.duration_s, "
            "'rule': value_json.reason.rule, 'segment': "
            "value_json.reason.segment, 'audience': "
            "value_json.reason.audience} | tojson }}",
            icon="mdi:monitor",
        )
    return out


def visitors_template() -> str:
    """The interval's visitors (docs/metrics.md): everyone, so the sum over every age
    class x gender, those whose gender stayed unsure, and the unclassified."""
    terms = [f"value_json.unique_visitors.{c}.{g}" for c in AGE_CLASSES for g in GENDERS]
    terms += [f"value_json.gender_unknown.{c}" for c in AGE_CLASSES]
    terms.append("value_json.unclassified")
    return f"{{{{ {' + '.join(terms)} }}}}"


class Discovery:
    """Publishes this box's discovery configs on connect and clears stale ones.

    Wired into the publisher's paho client: `attach` once, `on_connect` from its
    on_connect callback (network thread)."""

    def __init__(self, config: Config):
        ha = config.mqtt.home_assistant
        self.enabled = ha.enabled
        self.configs = discovery_configs(config) if ha.enabled else {}
        self.payloads = {
            topic: json.dumps(payload, separators=(",", ":"))
            for topic, payload in self.configs.items()
        }
        self.subscription = f"{ha.prefix}/+/{node_id(config)}/+/config"

    def attach(self, client) -> None:
        client.message_callback_add(self.subscription, self._on_message)

    def on_connect(self, client) -> None:
        for topic, text in self.payloads.items():
            client.publish(topic, text, qos=1, retain=True)
        # The broker answers with the retained configs it holds for this box (ours just
        # sent, and any stale ones), flagged retained; see _on_message.
        client.subscribe(self.subscription, qos=1)

    def _on_message(self, client, userdata, message) -> None:
        # Only messages the broker retained (sent because we subscribed) can be stale;
        # live ones are our own publishes or clears coming back.
        if not message.retain or not message.payload or message.topic in self.payloads:
            return
        try:
            client.publish(message.topic, b"", qos=1, retain=True)
        except Exception:  # never let it end paho's network thread (counts go through it)
            log.exception("home assistant: could not remove %s", message.topic)
            return
        why = "discovery is off" if not self.enabled else "no longer configured"
        log.info("home assistant: removed %s (%s)", message.topic, why)
