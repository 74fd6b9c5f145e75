"""Home Assistant MQTT discovery (edge/outputs/hass.py) against a real Mosquitto: the configs
the service announces, their templates rendered with Jinja2 (as Home Assistant does)
against the payloads the service really publishes, and stale configs removed."""

import json
import re
import time

import jinja2.sandbox
import pytest
from test_mqtt import run_to_end, start, stop, store_id

from broker import Subscriber
from conftest import ROOT, need, total

REQUIRED = {
    "name",
    "unique_id",
    "state_topic",
    "value_template",
    "availability",
    "device",
    "origin",
}
DEVICE_KEYS = {"identifiers", "name", "model", "sw_version", "manufacturer"}


def write_config(tmp_path, port, cameras, displays=(), ha="{}", protocol="3.1.1"):
    """cameras: [(id, source, loop)]; displays: [(id, camera)]."""
    store = store_id(tmp_path)
    lines = [f"models: {{dir: {ROOT / 'models'}}}", "cameras:"]
    lines += [
        f'  - {{id: {cid}, name: {cid.title()}, source: "{src}", loop: {str(loop).lower()}}}'
        for cid, src, loop in cameras
    ]
    if displays:
        lines += ["displays:"] + [f"  - {{id: {d}, camera: {c}}}" for d, c in displays]
    lines += [
        f"mqtt: {{enabled: true, host: 127.0.0.1, port: {port}, store_id: {store}, "
        f"keepalive_s: 5, protocol: '{protocol}', home_assistant: {ha}}}",
        f'selector: {{catalog: "{ROOT / "ads" / "catalog.yaml"}"}}',
        "player: {port: 0}",
        "metrics: {port: 0}",
        "stats: {interval_s: 1}",
        f"state_dir: {tmp_path / 'state'}",
    ]
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, f"edge/{store}", f"edge-{store}"


def render(template: str, payload: bytes) -> str:
    """A value or attributes template as Home Assistant renders it: sandboxed Jinja2 with
    `value` (the payload text) and `value_json` (the payload parsed)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    text = payload.decode()
    return env.from_string(template).render(value=text, value_json=json.loads(text)).strip()


def retained_configs(port, node, wait_s=3.0) -> dict[str, dict]:
    """The discovery configs the broker retains for a node, as a late Home Assistant
    would find them (empty retained payloads mean none)."""
    sub = Subscriber(port, f"homeassistant/+/{node}/+/config")
    time.sleep(wait_s)
    sub.close()
    found = {}
    for topic, payload, retained in sub.seen:
        if retained and payload:
            found[topic] = json.loads(payload)
    return found


def run_until_online(config, port, root):
    """Start the service, wait until it has connected (models load slowly on a busy
    machine), give its discovery a moment, stop it: its stderr."""
    sub = Subscriber(port, f"{root}/availability")
    proc = start(config)
    try:
        sub.wait_for(lambda t, p, r: p == b"online", timeout=120)
        time.sleep(1.5)
        _, err = stop(proc)
    finally:
        proc.kill()
        sub.close()
    assert proc.returncode == 0, err
    return err


def test_configs_are_complete_stable_and_unique(tmp_path):
    from edge import config as config_mod
    from edge.outputs import hass

    config, root, node = write_config(
        tmp_path,
        1883,
        [("door", "/dev/video0", False), ("hall", "/dev/video1", False)],
        [("window", "door"), ("till", "hall")],
    )
    cfg = config_mod.load(config)
    configs = hass.discovery_configs(cfg)
    assert configs == hass.discovery_configs(config_mod.load(config))  # stable
    assert len(configs) == 2 * 10 + 2  # per camera 9 sensors + online; per display 1
    unique_ids = [c["unique_id"] for c in configs.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    for topic, entity in configs.items():
        assert re.fullmatch(
            rf"homeassistant/(sensor|binary_sensor)/{node}/[A-Za-z0-9_-]+/config", topic
        ), topic
        json.loads(json.dumps(entity))
        assert REQUIRED <= set(entity), topic
        assert DEVICE_KEYS <= set(entity["device"]) and entity["device"]["identifiers"] == [root]
        assert entity["availability"] == [
            {
                "topic": f"{root}/availability",
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ]
        assert entity["state_topic"].startswith(f"{root}/")
        assert entity["unique_id"].startswith(f"{root}/")
    visitors = configs[f"homeassistant/sensor/{node}/visitors_hall/config"]
    assert visitors["state_class"] == "measurement" and visitors["unit_of_measurement"] == "people"
    assert visitors["state_topic"] == f"{root}/cameras/hall/counts"
    assert visitors["unique_id"] == f"{root}/camera/hall/visitors"
    online = configs[f"homeassistant/binary_sensor/{node}/online_door/config"]
    assert online["device_class"] == "connectivity"
    ad = configs[f"homeassistant/sensor/{node}/ad_till/config"]
    assert ad["json_attributes_topic"] == ad["state_topic"] == f"{root}/displays/till/content"


def test_templates_render_the_published_payloads_to_the_clip_s_numbers(broker, tmp_path):  # noqa: C901
    clip = need("media/face-demographics-walking-and-pause.gif")
    config, root, node = write_config(
        tmp_path, broker.port, [("door", clip, False)], [("window", "door")]
    )
    sub = Subscriber(broker.port, [f"{root}/#", f"homeassistant/+/{node}/+/config"])
    out, _ = run_to_end(config)
    sub.wait_for(lambda t, p, r: t.endswith("/counts"), timeout=5)
    time.sleep(0.5)
    sub.close()
    configs = {t: json.loads(p) for t, p, _ in sub.seen if t.startswith("homeassistant/") and p}
    assert len(configs) == 11
    for entity in configs.values():  # as the broker handed them out: JSON, complete
        assert REQUIRED <= set(entity) and DEVICE_KEYS <= set(entity["device"])
    published: dict[str, list[bytes]] = {}
    for topic, payload, _ in sub.seen:
        if topic.startswith(root):
            published.setdefault(topic, []).append(payload)

    def values(object_id, key="value_template", component="sensor"):
        entity = configs[f"homeassistant/{component}/{node}/{object_id}/config"]
        payloads = published[entity["state_topic"]]
        assert payloads, entity["state_topic"]
        return [render(entity[key], p) for p in payloads], [json.loads(p) for p in payloads]

    present, audience = values("present_door")
    assert [int(v) for v in present] == [a["present"] for a in audience]
    present_n = [int(v) for v in present]
    assert max(present_n) == 3 and present_n[-1] == 0  # 0: the service stopped
    watching, _ = values("watching_door")
    assert [int(v) for v in watching] == [a["watching"] for a in audience]
    segments = {}
    for age_class in ("child", "adult", "old"):
        for gender in ("female", "male"):
            rendered, _ = values(f"{age_class}-{gender}_door")
            segments[age_class, gender] = [int(v) for v in rendered]
    for i, message in enumerate(audience):
        assert {k: v[i] for k, v in segments.items()} == {
            (c, g): n for c, by_g in message["counts"].items() for g, n in by_g.items()
        }
    # Live labels may waver while samples come in; what is present always adds up.
    for i, message in enumerate(audience):
        assert sum(v[i] for v in segments.values()) + message["unclassified"] == present_n[i]
    assert any(sum(v[i] for v in segments.values()) == 3 for i in range(len(audience)))

    visitors, counts = values("visitors_door")
    # Everyone (docs/metrics.md): labelled, unsure of gender or unclassified.
    assert [int(v) for v in visitors] == [
        total(r["unique_visitors"]) + sum(r["gender_unknown"].values()) + r["unclassified"]
        for r in counts
    ]
    # The clip's three people, however a loaded machine's run labelled them: never lost.
    assert sum(int(v) for v in visitors) == 3
    by_segment = {}
    for text in values("visitors_door", "json_attributes_template")[0]:
        for c, by_g in json.loads(text)["unique_visitors"].items():
            for g, n in by_g.items():
                by_segment[c, g] = by_segment.get((c, g), 0) + n
    # The segments are the service's own (its labels are tested in test_service.py;
    # a live run on a loaded machine skips frames, so they can differ from the clip's).
    produced = {}
    for event in map(json.loads, out.splitlines()):
        if event["type"] == "interval":
            for c, by_g in event["unique_visitors"].items():
                for g, n in by_g.items():
                    produced[c, g] = produced.get((c, g), 0) + n
    assert by_segment == produced
    attributes, _ = values("visitors_door", "json_attributes_template")
    for text, report in zip(attributes, counts, strict=False):
        assert json.loads(text) == {
            k: report[k]
            for k in (
                "start",
                "end",
                "watchers",
                "unclassified",
                "unique_visitors",
                "gender_unknown",
            )
        }

    online, _ = values("online_door", component="binary_sensor")
    assert online == ["ON", "OFF"]  # online, then the service stopped
    online_attributes, _ = values("online_door", "json_attributes_template", "binary_sensor")
    assert json.loads(online_attributes[-1])["error"] == "service stopped"

    ads, contents = values("ad_window")
    assert ads == [c["ad"] for c in contents] and len(ads) >= 2
    reasons, _ = values("ad_window", "json_attributes_template")
    for text, content in zip(reasons, contents, strict=False):
        attributes = json.loads(text)
        assert attributes["rule"] == content["reason"]["rule"]
        assert attributes["segment"] == content["reason"]["segment"]
        assert attributes["audience"] == content["reason"]["audience"]
        assert attributes["title"] == content["title"]
    assert any(json.loads(t)["rule"] == "targeting" for t in reasons)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])  # v5 flags retained messages its own way
def test_removed_camera_and_display_are_cleared_and_disabling_clears_all(
    broker, tmp_path, group_photo, protocol
):
    two = [("door", group_photo, True), ("hall", group_photo, True)]
    config, root, node = write_config(
        tmp_path, broker.port, two, [("window", "door"), ("lobby", "hall")], protocol=protocol
    )
    err = run_until_online(config, broker.port, root)
    first = retained_configs(broker.port, node)
    assert len(first) == 22, err
    assert any("/online_hall/" in t for t in first) and any("/ad_lobby/" in t for t in first)

    write_config(tmp_path, broker.port, two[:1], [("window", "door")], protocol=protocol)
    err = run_until_online(config, broker.port, root)
    second = retained_configs(broker.port, node)
    assert set(second) == {t for t in first if t.endswith(("_door/config", "_window/config"))}
    assert len(second) == 11
    assert second == {t: first[t] for t in second}  # the same entities, unchanged
    assert err.count("home assistant: removed") == 11 and "no longer configured" in err

    write_config(
        tmp_path,
        broker.port,
        two[:1],
        [("window", "door")],
        ha="{enabled: false}",
        protocol=protocol,
    )
    err = run_until_online(config, broker.port, root)
    assert retained_configs(broker.port, node) == {}
    assert err.count("home assistant: removed") == 11 and "discovery is off" in err


@pytest.mark.parametrize("prefix", ["", "home/+", "a//b", "/homeassistant", "ha/#"])
def test_invalid_prefix_is_a_config_error(tmp_path, prefix):
    from edge import config as config_mod
    from edge.errors import ConfigError

    config, _, _ = write_config(
        tmp_path, 1883, [("door", "/dev/video0", False)], ha=json.dumps({"prefix": prefix})
    )
    with pytest.raises(ConfigError, match=r"'mqtt.home_assistant.prefix' is"):
        config_mod.load(config)
