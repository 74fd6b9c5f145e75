"""Store -> headquarters: the shipped Mosquitto bridge example, between two real
brokers on loopback, forwards counts, availability and stats (not decisions or the
live audience), and counts produced while the link is down arrive when it is back."""

import re
import time

from test_mqtt import produced_intervals, start, stop, store_id, write_config

from broker import Subscriber
from conftest import ROOT, need

EXAMPLE = ROOT / "mosquitto" / "bridge-hq.conf.example"


def bridge_config(store: str, hq_port: int) -> str:
    """The example as an installer would adapt it: store id, HQ address; no TLS or
    password on the loopback test broker. Topic rules and queueing are unchanged."""
    text = EXAMPLE.read_text().replace("store1", store)
    text = text.replace("hq.example.com:8883", f"127.0.0.1:{hq_port}")
    text = re.sub(r"^(bridge_cafile|remote_username|remote_password) .*$", "", text, flags=re.M)
    return text.replace("restart_timeout 2 60", "restart_timeout 1 2")


def test_bridge_forwards_counts_to_headquarters_across_a_link_drop(make_broker, tmp_path):
    clip = need("media/face-demographics-walking-and-pause.gif")
    hq = make_broker("hq")
    store = make_broker("store", extra=bridge_config(store_id(tmp_path), hq.port))
    config, root = write_config(tmp_path, store.port, source=clip, loop=True, interval_s=1)
    central = Subscriber(hq.port, "edge/#", client_id="hq-dashboard", persistent=True)
    proc = start(config)
    try:
        central.wait_for(lambda t, p, r: t == f"{root}/cameras/door/counts", timeout=30)
        central.wait_for(lambda t, p, r: t == f"{root}/availability" and p == b"online")
        central.wait_for(lambda t, p, r: t == f"{root}/stats")
        hq.stop()  # the store's link to headquarters drops
        time.sleep(4)
        hq.start()
        time.sleep(4)  # the bridge reconnects (restart_timeout) and delivers the queue
        events, err = stop(proc)
        assert proc.returncode == 0, err
        produced = produced_intervals(events)
        assert len(produced) >= 8
        deadline = time.monotonic() + 15
        while (
            len(central.reports("/cameras/door/counts")) < len(produced)
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        received = [
            {k: v for k, v in m.items() if k not in ("schema", "time", "id")}
            for m in central.reports("/cameras/door/counts")
        ]
        assert received == produced  # every interval, in order, across the drop (QoS 1
        # repeats, if any, dropped by id as a consumer does)
        topics = {t for t, _, _ in central.seen}
        assert not any(t.endswith(("/content", "/audience")) for t in topics), topics
        assert central.reports("/displays/window/plays")  # proof of play goes to HQ
        assert f"{root}/cameras/door/status" in topics
    finally:
        proc.kill()
        central.close()
