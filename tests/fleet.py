"""Head office on loopback, from the shipped files: the central broker of
mosquitto/hq.conf.example with its ACL (hq.acl.example), a TLS certificate of a test
CA of our own, and store brokers bridged to it by mosquitto/bridge-hq.conf.example.

The shipped files are run as they are; only ports, file paths and the store's id and
password are replaced, each replacement checked, so an example that changes shape
fails here rather than leaving the tests on a config nobody ships.
"""

from __future__ import annotations

import getpass
import json
import os
import ssl
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from broker import MOSQUITTO_PASSWD, Broker, free_port, stop_process
from conftest import ROOT, edge_process

HQ_CONF = ROOT / "mosquitto" / "hq.conf.example"
HQ_ACL = ROOT / "mosquitto" / "hq.acl.example"
BRIDGE = ROOT / "mosquitto" / "bridge-hq.conf.example"
OPENSSL = "openssl"  # Debian's openssl (Makefile TEST_DEBS): the test CA


def replaced(text: str, old: str, new: str, where: Path) -> str:
    assert old in text, f"{where.name} no longer holds {old!r}: update tests/fleet.py"
    return text.replace(old, new)


def make_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it (EC keys: quick to
    make): (ca.crt, hq.crt, hq.key). The bridge verifies the name as it would in a
    store (bridge_insecure stays off)."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run([OPENSSL, *args], cwd=folder, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=edge test CA",
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "hq.key", "-out", "hq.csr")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "hq.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "hq.crt")  # fmt: skip
    return folder / "ca.crt", folder / "hq.crt", folder / "hq.key"


class HqBroker(Broker):
    """The central broker: hq.conf.example and hq.acl.example, users from
    mosquitto_passwd as the example's recipe makes them. `port`: the loopback
    listener (`edge hq`); `tls_port`: the stores' TLS listener; `ca`: what a client
    verifies the broker with."""

    def __init__(self, folder: Path, users: dict[str, str]):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.ca, cert, key = make_ca(folder / "tls")
        self.tls_port = free_port()
        passwd, acl = folder / "hq.passwd", folder / "hq.acl"
        passwd.write_text("")
        for user, password in users.items():
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwd), user, password], check=True)
        acl.write_text(HQ_ACL.read_text())
        super().__init__(folder)  # port, log; its own config is replaced below
        text = HQ_CONF.read_text()
        for old, new in (
            ("listener 8883\n", f"listener {self.tls_port} 127.0.0.1\n"),
            ("listener 1883 127.0.0.1\n", f"listener {self.port} 127.0.0.1\n"),
            ("/etc/mosquitto/certs/hq.crt", str(cert)),
            ("/etc/mosquitto/certs/hq.key", str(key)),
            ("/etc/mosquitto/hq.passwd", str(passwd)),
            ("/etc/mosquitto/hq.acl", str(acl)),
            ("persistence_location /var/lib/mosquitto/", f"persistence_location {folder}/"),
        ):
            text = replaced(text, old, new, HQ_CONF)
        # Run as ourselves (as root Mosquitto would switch to its own user, which cannot
        # read our temporary folder) and log to the folder: not in the example, which
        # leaves both to Debian's /etc/mosquitto/mosquitto.conf.
        self.conf.write_text(f"user {getpass.getuser()}\nlog_dest file {self.log}\n" + text)


def bridge_config(store: str, password: str, hq: HqBroker, *, quick_retry: bool = False) -> str:
    """bridge-hq.conf.example as an installer adapts it for one store: its id (also its
    user at head office), its password, the address of head office and the CA that
    signed head office's certificate. `quick_retry`: reconnect within a second or two
    after a drop (the example's 2 to 60 s back-off would outlast a test)."""
    text = BRIDGE.read_text()
    for old, new in (
        ("hq.example.com:8883", f"127.0.0.1:{hq.tls_port}"),
        ("bridge_cafile /etc/ssl/certs/ca-certificates.crt", f"bridge_cafile {hq.ca}"),
        ("remote_password change-me", f"remote_password {password}"),
        ("store1", store),
    ):
        text = replaced(text, old, new, BRIDGE)
    if quick_retry:
        text = replaced(text, "restart_timeout 2 60", "restart_timeout 1 2", BRIDGE)
    return text


def tls_client(hq: HqBroker, user: str | None, password: str | None) -> mqtt.Client:
    """A paho client (MQTT 3.1.1, as the bridges speak) for the TLS listener, not yet
    connected."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=str(hq.ca), cert_reqs=ssl.CERT_REQUIRED)
    if user is not None:
        client.username_pw_set(user, password)
    return client


class EdgeHq:
    """`edge hq` on the central broker's loopback listener and a PostgreSQL database,
    as a head office runs it: its own hq.yaml, the password from the environment, a
    client id that stays the same across restarts (its persistent session)."""

    def __init__(self, folder: Path, hq: HqBroker, db_url: str, password: str):
        self.config = folder / "hq.yaml"
        folder.mkdir(parents=True, exist_ok=True)
        broker = {"host": "127.0.0.1", "port": hq.port, "username": "edge-hq",
                  "client_id": "edge-hq-test"}  # fmt: skip
        settings = {"broker": broker, "database": {"url": db_url}, "metrics": {"port": 0}}
        self.config.write_text(json.dumps(settings))  # JSON is YAML
        self.env = {**os.environ, "EDGE_HQ_MQTT_PASSWORD": password}
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def start(self, timeout: float = 60.0) -> EdgeHq:
        """Started, and subscribed (its log says so): messages from now on reach it."""
        self.proc = edge_process("hq", str(self.config), env=self.env)
        subscribed = threading.Event()

        def read(stream) -> None:
            for line in stream:
                self.lines.append(line.rstrip("\n"))
                if "subscribed" in line:
                    subscribed.set()

        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=read, args=(stream,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not subscribed.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"edge hq did not subscribe (exit {self.proc.poll()}): {self.lines[-20:]}"
                )
        return self

    def kill(self) -> None:
        """SIGKILL: nothing written or acknowledged at the end."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc)
        return self.proc.wait()
