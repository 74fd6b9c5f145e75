"""A real Mosquitto broker for tests, on a free loopback port, and a paho subscriber.

Mosquitto comes from Debian's package; `ensure_mosquitto()` installs it when it is
missing (the test machines run as root, as CI does). Each Broker has its own
config, persistence file and log in a temporary folder, and can be stopped and
started again on the same port (outage tests) or given a password file.
"""

from __future__ import annotations

import getpass
import json
import os
import queue
import shutil
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt

# tools/loopback.py: free ports and waiting for them, shared with tools/fleet_sim.py
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from loopback import free_port, wait_for_port  # noqa: E402
from loopback import stop_process as stop_process  # noqa: E402  (for tests/fleet.py)

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"


def ensure_mosquitto() -> None:
    if Path(MOSQUITTO).exists() and Path(MOSQUITTO_PASSWD).exists():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(
            "mosquitto is not installed and cannot be installed here: run "
            "'apt-get install mosquitto' as root"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "mosquitto"],
        check=True,
        env=env,
        capture_output=True,
    )


class Broker:
    def __init__(
        self,
        folder: Path,
        *,
        users: dict[str, str] | None = None,
        extra: str = "",
        port: int | None = None,
        persistence: bool = True,
    ):
        ensure_mosquitto()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log = self.folder / "mosquitto.log"
        # Run as ourselves: as root, Mosquitto would switch to its own user, which cannot
        # write the persistence file into our temporary folder.
        lines = [
            f"user {getpass.getuser()}",
            f"listener {self.port} 127.0.0.1",
            f"persistence {str(persistence).lower()}",
            f"persistence_location {self.folder}/",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if users:
            passwd = self.folder / "passwd"
            passwd.write_text("")
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwd), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines += ["allow_anonymous true"]
        self.conf = self.folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n" + extra)
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        """Graceful stop (SIGTERM): Mosquitto saves its persistence file."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Subscriber:
    """A paho client that records every message it gets, for assertions."""

    def __init__(
        self,
        port: int,
        topics: str | list[str] = "#",
        *,
        client_id: str = "",
        persistent: bool = False,
        username: str | None = None,
        password: str | None = None,
    ):
        self.messages: queue.Queue = queue.Queue()
        self.seen: list[tuple[str, bytes, bool]] = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent
        )
        self.client.reconnect_delay_set(0.2, 1)
        if username:
            self.client.username_pw_set(username, password)
        topics = [topics] if isinstance(topics, str) else topics
        connected = queue.Queue()

        def on_connect(client, userdata, flags, reason, properties):
            client.subscribe([(t, 1) for t in topics])

        def on_subscribe(client, userdata, mid, reasons, properties):
            connected.put(True)

        def on_message(client, userdata, msg):
            item = (msg.topic, msg.payload, bool(msg.retain))
            self.seen.append(item)
            self.messages.put(item)

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        connected.get(timeout=10)

    def wait_for(self, predicate, timeout: float = 20.0):
        """The first (topic, payload, retained) arriving after now... or already seen."""
        for item in self.seen:
            if predicate(*item):
                return item
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if predicate(*item):
                return item
        raise AssertionError(
            f"no matching message in {timeout} s; got "
            f"{[(t, p[:80]) for t, p, _ in self.seen[-10:]]}"
        )

    def json(self, suffix: str) -> list[dict]:
        """Payloads of every message so far whose topic ends with suffix, as JSON."""
        return [json.loads(p) for t, p, _ in self.seen if t.endswith(suffix)]

    def reports(self, suffix: str) -> list[dict]:
        """Interval reports (payloads with an `id`) as a consumer keeps them.

        QoS 1 is at-least-once: a report whose acknowledgement was lost when the
        broker went down is sent again, with the same id and payload, and the
        contract (docs/reference.md "MQTT topics") is that consumers drop such repeats. Any
        repeat must be exactly that, the same payload again; the first copy is kept.
        """
        first: dict[str, dict] = {}
        kept = []
        for message in self.json(suffix):
            if message["id"] in first:
                assert message == first[message["id"]], "same id, different report"
                continue
            first[message["id"]] = message
            kept.append(message)
        return kept

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
