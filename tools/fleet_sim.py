"""A fleet of simulated stores publishing to head office (docs/benchmarks.md, "Head
office ingest").

    .venv/bin/python tools/fleet_sim.py --local --db postgresql://... [--hq 1|2]
        [--stores 20] [--cameras 4] [--displays 2] [--minutes 120] [--start 10:00]
        [--backlog] [--rate MSG_S] [--seed 1] [--json FILE]
    .venv/bin/python tools/fleet_sim.py --broker HOST:PORT [--password PW] [--ca FILE] ...

Each store is an MQTT client of its own (MQTT 3.1.1 and QoS 1, as a store's bridge),
logged in as its store id when --password is given (head office's ACL lets it write
only below edge/<its id>/), and publishes what a box publishes: interval counts per
camera and plays per display, built by the box's own classes and payload function
(edge.events, edge.outputs.publish.report_message), with realistic mixes: visitors per
minute following a shop's day (closed at night), a spread of age classes and genders,
some gender-unsure and unclassified visitors, watchers, dwell and attention; plays of
the real catalog's ads (ads/catalog.yaml) back to back on each display, each with its
impressions, reach and watchers. Time is compressed: --minutes of one-minute intervals
go out as fast as the broker takes them (or at --rate messages a second), in the order
a fleet would send them (minute by minute across the stores).

It prints what it published (messages, and per store: intervals, visitors, plays,
impressions, reach). With --db it then waits until PostgreSQL holds all of it (the
rows of `edge hq`'s schema, edge/hq/schema.py), compares every store's totals exactly,
and prints the messages a second ingested, the end-to-end lag (p50/p95/max: from a
message's publish to the poll that first sees as many rows as messages had been sent
by then; rows polled every 50 ms, so the figures are that coarse) and the CPU seconds
the `edge hq` processes spent per 1,000 messages (/proc/<pid>/stat).

--local: a central broker of its own from the shipped mosquitto/hq.conf.example and
hq.acl.example (temporary folder, free loopback ports, a throwaway CA made with
openssl for the TLS listener the stores use, a user per store made with
mosquitto_passwd), and with --db, --hq N `edge hq` processes of one share group on it,
each with its own client id. --backlog: the `edge hq` processes are paused (SIGSTOP)
while everything is published and resumed after: the ingest then drains a full queue,
which measures its capacity apart from the publishers' speed on a small machine.

Exit status: 0 when every total matches (or without --db), 1 when one differs or the
rows do not all arrive within --timeout seconds.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import getpass
import json
import math
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.catalog import load_catalog  # noqa: E402
from edge.events import IntervalEvent, PlayEvent  # noqa: E402
from edge.outputs.publish import report_message  # noqa: E402
from edge.outputs.topics import Topics  # noqa: E402
from edge.pipeline.audience import add_to_segment  # noqa: E402
from edge.pipeline.plays import by_age_and_gender  # noqa: E402
from edge.records import AGE_CLASSES, GENDERS, UNCLASSIFIED  # noqa: E402
from edge.timefmt import iso  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))  # loopback, shared with the tests
from loopback import free_port, stop_process, wait_for_port  # noqa: E402

MOSQUITTO, MOSQUITTO_PASSWD = "/usr/sbin/mosquitto", "/usr/bin/mosquitto_passwd"
HQ_USER = "edge-hq"
POLL_S = 0.05
# Who walks in: a share per segment (age class_gender, <age>_unknown: gender unsure,
# unclassified), roughly a high-street shop's.
MIX = {
    "adult_female": 0.30,
    "adult_male": 0.27,
    "old_female": 0.08,
    "old_male": 0.06,
    "child_female": 0.04,
    "child_male": 0.04,
    "adult_unknown": 0.05,
    "old_unknown": 0.01,
    "child_unknown": 0.01,
    UNCLASSIFIED: 0.14,
}
OPEN, CLOSE = 8.0, 21.0  # opening hours (local), visitors follow a hump between them


@dataclass
class Totals:
    intervals: int = 0
    visitors: int = 0
    watchers: int = 0
    plays: int = 0
    impressions: int = 0
    reach: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Message:
    store: str
    topic: str
    payload: str
    order: float  # when a fleet would send it: the record's end


@dataclass
class Fleet:
    stores: list[str]
    messages: list[Message] = field(default_factory=list)
    totals: dict[str, Totals] = field(default_factory=dict)


def poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:  # normal approximation: exp(-lam) underflows nothing, but slowly
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def traffic(ts: float, peak: float) -> float:
    """Visitors per camera-minute at local time `ts`: none at night, a hump by day."""
    local = dt.datetime.fromtimestamp(ts)
    hour = local.hour + local.minute / 60
    if not OPEN <= hour < CLOSE:
        return 0.0
    return peak * (0.35 + 0.65 * math.sin(math.pi * (hour - OPEN) / (CLOSE - OPEN)))


def people(rng: random.Random, n: int) -> list[str]:
    return rng.choices(list(MIX), weights=list(MIX.values()), k=n)


def interval_event(rng: random.Random, camera: str, start: float, peak: float) -> IntervalEvent:
    segments: dict[str, dict] = {}
    for segment in people(rng, poisson(rng, traffic(start, peak))):
        dwell = round(rng.uniform(2.0, 45.0), 3)
        watcher = rng.random() < 0.3
        attention = round(rng.uniform(1.0, dwell / 2) if watcher else rng.uniform(0, 0.8), 3)
        add_to_segment(
            segments,
            segment,
            visitors=1,
            watchers=int(watcher),
            dwell_s=dwell,
            attention_s=attention,
        )
    visitors = {c: {g: segments.get(f"{c}_{g}", {}).get("visitors", 0) for g in GENDERS}
                for c in AGE_CLASSES}  # fmt: skip
    unsure = {c: segments.get(f"{c}_unknown", {}).get("visitors", 0) for c in AGE_CLASSES}
    return IntervalEvent(
        camera,
        iso(start),
        iso(start + 60),
        visitors,
        unsure,
        sum(s["watchers"] for s in segments.values()),
        segments.get(UNCLASSIFIED, {}).get("visitors", 0),
        round(sum(s["dwell_s"] for s in segments.values()), 3),
        round(sum(s["attention_s"] for s in segments.values()), 3),
        segments,
    )


def play_event(rng, display, camera, ad, start, end, peak) -> PlayEvent:
    segments: dict[str, dict] = {}
    # viewers: those in front of the display while it ran (about as many as walk past
    # a camera in that time, a little fewer)
    for segment in people(rng, poisson(rng, 0.8 * traffic(start, peak) * (end - start) / 60)):
        dwell = round(rng.uniform(1.5, end - start), 3)
        looked = round(rng.uniform(0, dwell), 3)
        add_to_segment(
            segments,
            segment,
            impressions=1,
            reach=int(rng.random() < 0.7),  # first play of this ad for most of them
            watchers=int(looked >= 1.0),
            attention_s=looked,
            dwell_s=dwell,
        )
    return PlayEvent(
        f"{display}/{iso(start)}",
        display,
        camera,
        ad.id,
        ad.title,
        rng.choice(("targeting", "targeting", "targeting", "nobody", "children")),
        iso(start),
        iso(end),
        duration_s=round(end - start, 3),
        viewers=by_age_and_gender(segments, "impressions"),
        watchers=by_age_and_gender(segments, "watchers"),
        unclassified=segments.get(UNCLASSIFIED, {}).get("impressions", 0),
        attention_s=round(sum(s["attention_s"] for s in segments.values()), 3),
        segments=segments,
        campaign=ad.campaign,
        advertiser=ad.advertiser,
    )


def build(args, run: str) -> Fleet:
    """Every store's intervals and plays over the simulated period, as MQTT messages
    in the order a fleet sends them."""
    rng = random.Random(args.seed)
    catalog = load_catalog(ROOT / "ads" / "catalog.yaml")
    ads = list(catalog.ads.values())
    day = dt.datetime.combine(dt.date.fromisoformat(args.day), dt.time.fromisoformat(args.start))
    begin = day.astimezone().timestamp()
    end = begin + 60 * args.minutes
    fleet = Fleet([f"sim-{run}-{i:04d}" for i in range(args.stores)])
    stamp = iso(time.time())  # each message's `time`; the ingest does not read it
    for store in fleet.stores:
        topics = Topics("edge", store)
        totals = fleet.totals[store] = Totals()
        peak = args.peak * rng.uniform(0.5, 1.5)  # busy and quiet stores
        cameras = [f"cam{c + 1}" for c in range(args.cameras)]
        for camera in cameras:
            for minute in range(args.minutes):
                event = interval_event(rng, camera, begin + 60 * minute, peak)
                topic, payload = report_message(topics, event, stamp)
                fleet.messages.append(Message(store, topic, payload, begin + 60 * minute + 60))
                totals.intervals += 1
                totals.visitors += sum(s["visitors"] for s in event.segments.values())
                totals.watchers += event.watchers
        for d in range(args.displays):
            display, camera = f"display{d + 1}", cameras[d % len(cameras)]
            t = begin + rng.uniform(0, 10)
            while True:  # back to back, while the shop is open
                ad = rng.choice(ads)
                stop = t + ad.duration_s + rng.uniform(0, 2)
                if stop > end:
                    break
                if traffic(t, 1.0) > 0:
                    event = play_event(rng, display, camera, ad, t, stop, peak)
                    topic, payload = report_message(topics, event, stamp)
                    fleet.messages.append(Message(store, topic, payload, stop))
                    totals.plays += 1
                    totals.impressions += sum(s["impressions"] for s in event.segments.values())
                    totals.reach += sum(s["reach"] for s in event.segments.values())
                t = stop
    fleet.messages.sort(key=lambda m: m.order)
    return fleet


# -- a central broker of our own (--local) ----------------------------------------------


def die_with_us() -> None:
    """In a child, before exec: end with SIGTERM when this tool ends, however it ends
    (a killed benchmark leaves no broker or `edge hq` behind)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_port(port: int, timeout: float = 10.0) -> None:
    try:
        wait_for_port(port, timeout)
    except TimeoutError as e:
        raise SystemExit(f"fleet_sim: {e}") from None


class LocalBroker:
    """mosquitto/hq.conf.example and hq.acl.example, run from a temporary folder with
    ports and paths replaced; users: edge-hq and every store, one password."""

    def __init__(self, folder: Path, users: list[str], password: str):
        self.folder = folder
        self.port, self.tls_port = free_port(), free_port()
        tls = folder / "tls"
        tls.mkdir(parents=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for args in (
            ["req", "-x509", *ec, "-days", "2", "-subj", "/CN=fleet_sim CA",
             "-keyout", "ca.key", "-out", "ca.crt"],
            ["req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "hq.key", "-out", "hq.csr"],
            ["x509", "-req", "-in", "hq.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "hq.crt"],
        ):  # fmt: skip
            (tls / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
            subprocess.run(["openssl", *args], cwd=tls, check=True, capture_output=True)
        self.ca = tls / "ca.crt"
        passwd, acl = folder / "hq.passwd", folder / "hq.acl"
        # mosquitto_passwd -U hashes a whole file of user:password lines at once
        passwd.write_text("".join(f"{u}:{password}\n" for u in [HQ_USER, *users]))
        subprocess.run([MOSQUITTO_PASSWD, "-U", str(passwd)], check=True)
        acl.write_text((ROOT / "mosquitto" / "hq.acl.example").read_text())
        text = (ROOT / "mosquitto" / "hq.conf.example").read_text()
        for old, new in (
            ("listener 8883\n", f"listener {self.tls_port} 127.0.0.1\n"),
            ("listener 1883 127.0.0.1\n", f"listener {self.port} 127.0.0.1\n"),
            ("/etc/mosquitto/certs/hq.crt", str(tls / "hq.crt")),
            ("/etc/mosquitto/certs/hq.key", str(tls / "hq.key")),
            ("/etc/mosquitto/hq.passwd", str(passwd)),
            ("/etc/mosquitto/hq.acl", str(acl)),
            ("/var/lib/mosquitto/", f"{folder}/"),
        ):
            if old not in text:
                raise SystemExit(f"fleet_sim: hq.conf.example no longer holds {old!r}")
            text = text.replace(old, new)
        conf = folder / "hq.conf"
        conf.write_text(f"user {getpass.getuser()}\nlog_dest file {folder}/mosquitto.log\n" + text)
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stderr=subprocess.DEVNULL, preexec_fn=die_with_us
        )
        wait_port(self.port)
        wait_port(self.tls_port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class HqProcess:
    """One `edge hq` on the central broker and the database, a client id of its own."""

    def __init__(self, folder: Path, index: int, host: str, port: int, password: str, db: str):
        config = folder / f"hq-{index}.yaml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "broker": {
                        "host": host,
                        "port": port,
                        "username": HQ_USER,
                        "client_id": f"fleet-sim-hq-{index}",
                    },
                    "database": {"url": db},
                    "metrics": {"port": 0},
                },
                indent=1,
            )
        )
        env = {**os.environ, "EDGE_HQ_MQTT_PASSWORD": password}
        self.log = (folder / f"hq-{index}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "hq", str(config)],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_us,
        )

    def cpu_s(self) -> float:
        """User and system CPU seconds of the process so far, all its threads."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def pause(self, paused: bool) -> None:
        self.proc.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


# -- publishing ---------------------------------------------------------------------------


class Publishers:
    """One MQTT client per store; counts the broker's acknowledgements."""

    def __init__(self, stores, host, port, password, ca):
        self.acked = 0
        self.lock = threading.Lock()
        self.clients: dict[str, mqtt.Client] = {}
        for store in stores:
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=f"bridge-{store}",
                protocol=mqtt.MQTTv311,
            )  # fmt: skip
            if password is not None:
                client.username_pw_set(store, password)
            if ca:
                client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
            client.on_publish = self._acked
            client.connect(host, port, keepalive=30)
            client.loop_start()
            self.clients[store] = client
        deadline = time.monotonic() + 20
        while not all(c.is_connected() for c in self.clients.values()):
            if time.monotonic() > deadline:
                raise SystemExit(f"fleet_sim: stores could not connect to {host}:{port}")
            time.sleep(0.05)

    def _acked(self, client, userdata, mid, reason, properties) -> None:
        with self.lock:
            self.acked += 1

    def close(self) -> None:
        for client in self.clients.values():
            client.disconnect()
            client.loop_stop()


def publish(pubs: Publishers, messages: list[Message], rate: float) -> list[float]:
    """Every message, in order, at `rate` messages a second (0: as fast as paho takes
    them): the time each was handed over."""
    sent = []
    began = time.time()
    for n, m in enumerate(messages):
        if rate:
            ahead = began + n / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
        pubs.clients[m.store].publish(m.topic, m.payload, qos=1)
        sent.append(time.time())
    return sent


# -- PostgreSQL ---------------------------------------------------------------------------


def db_rows(conn, pattern: str) -> int:
    import psycopg

    try:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM intervals WHERE store LIKE %(p)s)"
            " + (SELECT count(*) FROM plays WHERE store LIKE %(p)s)",
            {"p": pattern},
        ).fetchone()
    except psycopg.errors.UndefinedTable:  # edge hq makes its tables as it starts
        return 0
    return int(row[0])


class Poller(threading.Thread):
    """Rows of the run in the database, counted every POLL_S on a connection of its
    own, from before the first publish on: (time, rows) for the lag and the rate."""

    def __init__(self, url: str, pattern: str):
        import psycopg

        super().__init__(daemon=True)
        self.conn = psycopg.connect(url, autocommit=True)
        self.pattern = pattern
        self.seen: list[tuple[float, int]] = [(time.time(), db_rows(self.conn, pattern))]
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(POLL_S):
            self.seen.append((time.time(), db_rows(self.conn, self.pattern)))

    def rows(self) -> int:
        return self.seen[-1][1]

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
        self.conn.close()


def db_totals(conn, pattern: str) -> dict[str, dict]:
    got: dict[str, dict] = {}

    def put(sql: str, names: tuple[str, ...]) -> None:
        for store, *values in conn.execute(sql, {"p": pattern}).fetchall():
            row = got.setdefault(store, Totals().as_dict())
            row.update({n: int(v or 0) for n, v in zip(names, values, strict=True)})

    put(
        "SELECT store, count(*), sum(watchers) FROM intervals WHERE store LIKE %(p)s"
        " GROUP BY store",
        ("intervals", "watchers"),
    )
    put(
        "SELECT store, sum(visitors) FROM interval_segments WHERE store LIKE %(p)s GROUP BY store",
        ("visitors",),
    )
    put("SELECT store, count(*) FROM plays WHERE store LIKE %(p)s GROUP BY store", ("plays",))
    put(
        "SELECT store, sum(impressions), sum(reach) FROM play_segments WHERE store LIKE %(p)s"
        " GROUP BY store",
        ("impressions", "reach"),
    )
    return got


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def lags(sent: list[float], seen: list[tuple[float, int]], base: int) -> list[float]:
    """Per message, the time from its publish to the first poll with at least as many
    new rows as messages published up to it (the n-th row committed is matched to the
    n-th message sent: order across stores and processes is not kept exactly, so this
    is an estimate, as coarse as the polling)."""
    times = [t for t, _ in seen]
    counts = [c - base for _, c in seen]
    out = []
    for n, t_sent in enumerate(sent, start=1):
        i = bisect.bisect_left(counts, n)
        if i < len(times):
            out.append(max(0.0, times[i] - t_sent))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--broker", help="HOST:PORT of a running central broker")
    where.add_argument("--local", action="store_true", help="start one from hq.conf.example")
    ap.add_argument("--password", help="every store's password (user: its store id)")
    ap.add_argument("--ca", help="CA file: connect with TLS")
    ap.add_argument("--db", help="PostgreSQL URL `edge hq` writes to: wait and compare")
    ap.add_argument("--hq", type=int, default=0, help="with --local and --db: edge hq processes")
    ap.add_argument("--backlog", action="store_true", help="pause edge hq while publishing")
    ap.add_argument("--stores", type=int, default=20)
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--displays", type=int, default=2)
    ap.add_argument("--minutes", type=int, default=120, help="one-minute intervals per camera")
    ap.add_argument(
        "--day", default=dt.date.today().isoformat(), help="the simulated day (default: today)"
    )
    ap.add_argument("--start", default="10:00", help="local time of the first interval")
    ap.add_argument("--peak", type=float, default=4.0, help="visitors per camera-minute at peak")
    ap.add_argument("--rate", type=float, default=0.0, help="messages/s (0: as fast as it goes)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the rows")
    ap.add_argument("--json", help="write the figures to this file too")
    args = ap.parse_args(argv)
    if args.hq and not (args.local and args.db):
        ap.error("--hq starts edge hq on the --local broker: give --local and --db")
    if args.backlog and not args.hq:
        ap.error("--backlog pauses the edge hq processes this tool starts: give --hq")
    return args


def describe(args, run: str, fleet: Fleet) -> dict:
    """Print what the fleet will publish; the figures so far."""
    n = len(fleet.messages)
    total = Totals(**{k: sum(getattr(t, k) for t in fleet.totals.values())
                      for k in Totals().as_dict()})  # fmt: skip
    print(
        f"fleet {run}: {args.stores} stores x {args.cameras} cameras x {args.displays} displays, "
        f"{args.minutes} minutes from {args.day} {args.start}: {n} messages "
        f"({total.intervals} intervals, {total.plays} plays; {total.visitors} visitors, "
        f"{total.impressions} impressions, {total.reach} reach)"
    )
    return {"run": run, "messages": n, "totals": total.as_dict()}


@dataclass
class Rig:
    """What a run starts and must stop: the local broker, edge hq processes, the
    database connection and the row poller."""

    broker: LocalBroker | None = None
    hqs: list[HqProcess] = field(default_factory=list)
    conn: Any = None
    poller: Poller | None = None

    def close(self) -> None:
        for h in self.hqs:
            h.pause(False)
            h.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.poller is not None:
            self.poller.stop()
        if self.conn is not None:
            self.conn.close()


def publish_all(args, pubs: Publishers, fleet: Fleet, figures: dict) -> tuple[list[float], int]:
    """Every message published and acknowledged (or --timeout): send times, status."""
    n = len(fleet.messages)
    t0 = time.time()
    sent = publish(pubs, fleet.messages, args.rate)
    while pubs.acked < n and time.time() - t0 < args.timeout:
        time.sleep(0.01)
    took = time.time() - t0
    print(f"published: {pubs.acked}/{n} acknowledged by the broker in {took:.2f} s "
          f"({n / took:.0f} messages/s)")  # fmt: skip
    figures["publish_s"] = round(took, 3)
    return sent, 0 if pubs.acked == n else 1


def run_fleet(args, run: str, fleet: Fleet, folder: Path, figures: dict, rig: Rig) -> int:
    password = args.password
    if args.local:
        password = password or "sim-" + run
        rig.broker = LocalBroker(folder, fleet.stores + [f"probe-{run}"], password)
        host, port, ca = "127.0.0.1", rig.broker.tls_port, rig.broker.ca
    else:
        host, _, p = args.broker.rpartition(":")
        port, ca = int(p), args.ca
    if args.db:
        import psycopg

        if rig.broker is not None:
            for i in range(args.hq):
                rig.hqs.append(HqProcess(folder, i + 1, host, rig.broker.port, password, args.db))
        rig.conn = psycopg.connect(args.db, autocommit=True)
        wait_ready(args, rig.conn, run, host, port, password, ca, rig.hqs)
        rig.poller = Poller(args.db, f"sim-{run}-%")
        rig.poller.start()
    pubs = Publishers(fleet.stores, host, port, password, ca)
    try:
        for h in rig.hqs if args.backlog else ():
            h.pause(True)
        cpu0 = sum(h.cpu_s() for h in rig.hqs)
        sent, status = publish_all(args, pubs, fleet, figures)
        if rig.poller is not None:
            status |= ingest(args, rig.conn, rig.poller, run, fleet, sent, cpu0, rig.hqs, figures)
        return status
    finally:
        pubs.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = f"{random.Random().getrandbits(24):06x}"
    fleet = build(args, run)
    figures = describe(args, run, fleet)
    folder = Path(tempfile.mkdtemp(prefix="fleet-sim-"))
    rig = Rig()
    try:
        status = run_fleet(args, run, fleet, folder, figures, rig)
    finally:
        rig.close()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    if status == 0:
        shutil.rmtree(folder, ignore_errors=True)
    else:  # the broker's and edge hq's logs, for the differences printed above
        print(f"logs kept in {folder}")
    return status


def wait_ready(args, conn, run, host, port, password, ca, hqs) -> None:
    """An interval of a probe store, sent until a row of it is in the database: the
    ingest is subscribed (messages published before that would have no subscriber)."""
    probe = f"probe-{run}"
    pubs = Publishers([probe], host, port, password, ca)
    rng = random.Random(0)
    deadline = time.monotonic() + 120
    k = 0
    try:
        while time.monotonic() < deadline:
            for h in hqs:
                if h.proc.poll() is not None:
                    raise SystemExit(f"fleet_sim: edge hq exited ({h.proc.returncode}), "
                                     f"see {h.log.name}")  # fmt: skip
            # now: head office keeps months from the current one (partitions)
            event = interval_event(rng, "probe", time.time() - 60 + k / 1000, 0)
            topic, payload = report_message(Topics("edge", probe), event, iso(time.time()))
            pubs.clients[probe].publish(topic, payload, qos=1)
            k += 1
            time.sleep(0.5)
            if db_rows(conn, probe):
                return
    finally:
        pubs.close()
    raise SystemExit("fleet_sim: no probe row in the database after 120 s: is edge hq running?")


def ingest(args, conn, poller, run, fleet, sent, cpu0, hqs, figures) -> int:
    """Wait for every row, compare the totals, print the figures. Live: from the first
    publish; --backlog: from the moment the paused `edge hq` processes resume."""
    n = len(fleet.messages)
    pattern = f"sim-{run}-%"
    base = poller.seen[0][1]  # rows of this run before it began (none, unless reused)
    start = sent[0] if sent else time.time()
    if args.backlog:
        cpu0 = sum(h.cpu_s() for h in hqs)
        start = time.time()
        for h in hqs:
            h.pause(False)
    while poller.rows() - base < n and time.time() - start < args.timeout:
        time.sleep(POLL_S)
    cpu = sum(h.cpu_s() for h in hqs) - cpu0
    seen = list(poller.seen)
    done = next((t for t, c in seen if c - base >= n), None)
    got = db_totals(conn, pattern)
    want = {s: t.as_dict() for s, t in fleet.totals.items()}
    want = {s: t for s, t in want.items() if t["intervals"] or t["plays"]}
    differ = sorted(s for s in set(want) | set(got) if want.get(s) != got.get(s))
    if done is None:
        print(f"ingested: {seen[-1][1] - base}/{n} rows after {args.timeout:.0f} s")
        figures["complete"] = False
    else:
        took = done - start
        rate = n / took
        what = "drained a full queue" if args.backlog else "from the first publish"
        print(f"ingested: {n} messages in {took:.2f} s ({rate:.0f} messages/s, {what})")
        figures.update(complete=True, ingest_s=round(took, 3), messages_per_s=round(rate))
        if not args.backlog:
            lag = lags(sent, seen, base)
            p50, p95, top = pct(lag, 0.5), pct(lag, 0.95), max(lag)
            print(f"lag publish -> committed: p50 {p50:.2f} s, p95 {p95:.2f} s, max {top:.2f} s")
            figures["lag_s"] = {"p50": round(p50, 3), "p95": round(p95, 3), "max": round(top, 3)}
        if hqs:
            per = cpu / (n / 1000)
            print(f"edge hq x{len(hqs)}: {cpu:.2f} CPU s, {per:.3f} CPU s per 1,000 messages")
            figures.update(hq_processes=len(hqs), hq_cpu_s_per_1000=round(per, 4))
    for store in differ[:5]:
        print(f"  {store}: published {want.get(store)}, in the database {got.get(store)}")
    equal = not differ and done is not None
    print(f"totals per store: {'all ' + str(len(want)) + ' equal' if equal else 'DIFFER'}")
    figures["totals_equal"] = equal
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
